//! Teardown: detach, prune, and the reconciliation both end with.
//!
//! Teardown keeps going: each step's error is collected and the next step still runs, and the
//! caller gets every error at once ([`KernelError::Teardown`]). The steps, for each lease that
//! goes:
//!   1. the lease leaves the lease file (so nothing re-creates its rules);
//!   2. its host veth is deleted, which deletes the container end too (already gone if the
//!      container's network namespace died);
//!   3. reconcile: the `inet tapir` table is re-rendered from the remaining leases (deleted when
//!      none is left); each bridge tapir created that no lease names any more is deleted (its
//!      route_localnet goes with it; a bridge that was there before tapir is never deleted);
//!      with no lease left, ip_forward gets its recorded value back. (The table and
//!      ip_forward are left alone while another state directory is in charge of them.)
//!
//! A lease is stale when its recorded process is dead or its host veth is gone: the container
//! (network namespace) it served no longer exists. Stale leases are reclaimed by the next
//! attach and by `tapir network prune`. (A recycled pid can keep a stale lease alive until its
//! veth goes; it never makes a live lease look stale.)

use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::state::{Lease, Manager, State, StateLock};
use super::{BridgeConfig, KernelError, bridge, nft, sysctl};
use crate::netlink::Netlink;

/// The sentence for several teardown errors.
pub fn join(errors: &[KernelError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    match texts.len() {
        0 => "teardown failed".into(),
        1 => texts[0].clone(),
        n => format!("{n} teardown steps failed: {}", texts.join("; ")),
    }
}

/// One error as itself, several as a [`KernelError::Teardown`].
pub fn collapse(mut errors: Vec<KernelError>) -> KernelError {
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        KernelError::Teardown(errors)
    }
}

fn done(errors: Vec<KernelError>) -> Result<(), KernelError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(collapse(errors))
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(Pid::from_raw(raw), None),
        Err(Errno::ESRCH)
    )
}

fn is_stale(nl: &mut Netlink, lease: &Lease, errors: &mut Vec<KernelError>) -> bool {
    if lease.pid.is_some_and(|pid| !process_alive(pid)) {
        return true;
    }
    match nl.link_get(&lease.host_veth) {
        Ok(link) => link.is_none(),
        Err(e) => {
            errors.push(e.into());
            false
        }
    }
}

/// Takes the stale leases out of `state` and deletes what is left of their veths; the caller
/// saves the state and reconciles. Returns the leases removed.
pub(super) fn remove_stale(
    nl: &mut Netlink,
    state: &mut State,
    errors: &mut Vec<KernelError>,
) -> Vec<Lease> {
    let mut stale = Vec::new();
    let mut kept = Vec::new();
    for lease in std::mem::take(&mut state.leases) {
        if is_stale(nl, &lease, errors) {
            log::info!(
                "reclaiming the stale lease of {} ({})",
                lease.owner,
                lease.address
            );
            stale.push(lease);
        } else {
            kept.push(lease);
        }
    }
    state.leases = kept;
    for lease in &stale {
        remove_lease_objects(nl, lease, errors);
    }
    stale
}

/// Deletes the host veth of `lease` if it still exists.
pub(super) fn remove_lease_objects(nl: &mut Netlink, lease: &Lease, errors: &mut Vec<KernelError>) {
    delete_link(nl, &lease.host_veth, errors);
}

fn delete_link(nl: &mut Netlink, name: &str, errors: &mut Vec<KernelError>) {
    match nl.link_get(name) {
        Ok(Some(link)) => {
            if let Err(e) = nl.link_delete(link.index) {
                errors.push(e.into());
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e.into()),
    }
}

/// Saves `state`, renders the firewall from it, deletes the bridges tapir created that no
/// lease names any more, and restores ip_forward when no lease is left. The firewall and
/// ip_forward are left alone while another state directory manages them (see [`Manager`]).
pub(super) fn reconcile(
    nl: &mut Netlink,
    lock: &StateLock,
    manager: &Manager,
    state: &mut State,
    errors: &mut Vec<KernelError>,
) {
    if let Err(e) = lock.save(state) {
        errors.push(e.into());
    }
    // Not knowing who is in charge leaves the shared objects alone too.
    let in_charge = match manager.rival(lock.dir()) {
        Ok(None) => true,
        Ok(Some((dir, _))) => {
            log::info!(
                "leaving the inet tapir table and ip_forward to {}, which manages them",
                dir.display()
            );
            false
        }
        Err(e) => {
            errors.push(e.into());
            false
        }
    };
    if in_charge && let Err(e) = nft::apply(&nft::batch(&state.leases)) {
        errors.push(e.into());
    }
    for br in state.bridges_created.clone() {
        if state.bridge_in_use(&br) {
            continue;
        }
        match nl.link_get(&br) {
            Ok(Some(link)) if link.is_bridge => match nl.link_delete(link.index) {
                Ok(()) => log::info!("deleted the bridge {br}"),
                Err(e) => {
                    errors.push(e.into());
                    continue;
                }
            },
            Ok(_) => {}
            Err(e) => {
                errors.push(e.into());
                continue;
            }
        }
        state.bridges_created.retain(|b| *b != br);
        if let Err(e) = lock.save(state) {
            errors.push(e.into());
        }
    }
    if state.leases.is_empty()
        && in_charge
        && let Some(old) = state.ip_forward_before.clone()
    {
        // The recorded value goes only once it is back: should the write fail, a later
        // detach or prune tries again rather than leave forwarding on for good.
        match sysctl::write(sysctl::IP_FORWARD, &old) {
            Ok(()) => {
                state.ip_forward_before = None;
                if let Err(e) = lock.save(state) {
                    errors.push(e.into());
                }
            }
            Err(e) => errors.push(e.into()),
        }
    }
}

pub(super) fn detach(
    cfg: &BridgeConfig,
    _netns: Option<&Path>,
    ifname: &str,
    owner: &str,
) -> Result<(), KernelError> {
    let (lock, manager) = StateLock::acquire_managed(&cfg.state_dir)?;
    let mut state = lock.load()?;
    let mut nl = Netlink::open()?;
    let mut errors = Vec::new();
    if let Some(pos) = state
        .leases
        .iter()
        .position(|l| l.owner == owner && l.ifname == ifname)
    {
        let lease = state.leases.remove(pos);
        if let Err(e) = lock.save(&state) {
            errors.push(e.into());
        }
        remove_lease_objects(&mut nl, &lease, &mut errors);
        log::info!("detached {owner} {ifname} ({})", lease.address);
    } else {
        // No lease: an attach that died before writing one can only have left a veth under
        // the name derived from (owner, ifname). Deleting it deletes its container end.
        delete_link(&mut nl, &bridge::host_veth_name(owner, ifname), &mut errors);
    }
    remove_stale(&mut nl, &mut state, &mut errors);
    reconcile(&mut nl, &lock, &manager, &mut state, &mut errors);
    done(errors)
}

pub(super) fn prune(state_dir: &Path) -> Result<Vec<String>, KernelError> {
    let (lock, manager) = StateLock::acquire_managed(state_dir)?;
    let mut state = lock.load()?;
    let mut nl = Netlink::open()?;
    let mut errors = Vec::new();
    let stale = remove_stale(&mut nl, &mut state, &mut errors);
    reconcile(&mut nl, &lock, &manager, &mut state, &mut errors);
    done(errors)?;
    Ok(stale.into_iter().map(|l| l.owner).collect())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn several_errors_read_as_one_sentence() {
        let e = |v: &str| KernelError::NotAttached {
            owner: v.into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            collapse(vec![e("a")]).to_string(),
            "\"a\" has no interface \"eth0\" attached"
        );
        assert_eq!(
            collapse(vec![e("a"), e("b")]).to_string(),
            "2 teardown steps failed: \"a\" has no interface \"eth0\" attached; \"b\" has no interface \"eth0\" attached"
        );
    }

    #[test]
    fn our_own_process_is_alive() {
        assert!(process_alive(std::process::id()));
    }
}

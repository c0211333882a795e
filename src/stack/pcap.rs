//! The `--pcap` capture: every Ethernet frame crossing the TAP, in libpcap format.
//!
//! The file is classic pcap (not pcapng), LINKTYPE_ETHERNET, microsecond timestamps, the host's
//! byte order, so tcpdump, tshark and Wireshark of any age read it. The snaplen is 262144
//! (libpcap's largest) rather than the MTU, because with TSO the guest hands over segments of up
//! to 64 KiB and those are what crossed the TAP.
//!
//! Capturing must never hurt the data path: `write` returns nothing. The first write or flush
//! error is logged once, the sink stops writing (a half-written record would make the rest of
//! the file unreadable anyway) and later frames are only counted in `lost_frames`. Frames still
//! buffered when a flush fails are lost without being counted.
//!
//! The caller passes the timestamp (time since the UNIX epoch), so this module reads no clock.
//! The file is created mode 0600: it holds the guest's traffic, DNS names and all.
//!
//! pcap-file's `PcapWriter` would own the `BufWriter` and offers no way to flush it without
//! giving it up, so the sink writes pcap-file's `PcapHeader` itself and frames its 16-byte
//! records by hand (the format is four u32s, libpcap's `pcap_pkthdr` on disk).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::warn;
use pcap_file::pcap::PcapHeader;
use pcap_file::{DataLink, Endianness, TsResolution};

/// libpcap's MAXIMUM_SNAPLEN; larger than any TSO frame.
const SNAPLEN: u32 = 262_144;
/// Room for a few dozen MTU-sized frames per `write(2)`.
const BUFFER_BYTES: usize = 128 * 1024;

/// A `--pcap` file that cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot create the pcap file {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the pcap header to {}", path.display())]
    Header {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
}

/// An open capture file; see the module documentation.
#[derive(Debug)]
pub struct PcapSink {
    path: PathBuf,
    out: BufWriter<File>,
    failed: bool,
    lost_frames: u64,
}

impl PcapSink {
    /// Creates (or truncates) `path` and writes the file header.
    pub fn create(path: &Path) -> Result<Self, PcapError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| PcapError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        let mut out = BufWriter::with_capacity(BUFFER_BYTES, file);
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        header
            .write_to(&mut out)
            .map_err(|source| PcapError::Header {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(PcapSink {
            path: path.to_path_buf(),
            out,
            failed: false,
            lost_frames: 0,
        })
    }

    /// Appends one Ethernet frame seen at `ts` (since the UNIX epoch). Never fails; see the
    /// module documentation for what happens on an I/O error.
    pub fn write(&mut self, ts: Duration, frame: &[u8]) {
        if self.failed {
            self.lost_frames += 1;
            return;
        }
        let captured = &frame[..frame.len().min(SNAPLEN as usize)];
        let record = record_header(ts, captured.len(), frame.len());
        let result = self
            .out
            .write_all(&record)
            .and_then(|()| self.out.write_all(captured));
        if let Err(e) = result {
            self.lost_frames += 1;
            self.fail(&e);
        }
    }

    /// Pushes buffered frames to the file, so a reader sees them (the event loop calls this
    /// when idle and at exit).
    pub fn flush(&mut self) {
        if self.failed {
            return;
        }
        if let Err(e) = self.out.flush() {
            self.fail(&e);
        }
    }

    /// Frames not captured because of a write error.
    pub fn lost_frames(&self) -> u64 {
        self.lost_frames
    }

    fn fail(&mut self, e: &io::Error) {
        warn!(
            "pcap: writing {} failed, capture stopped: {e}",
            self.path.display()
        );
        self.failed = true;
    }
}

impl Drop for PcapSink {
    /// `BufWriter` would flush on drop too, but silently; this way a lost tail is logged.
    fn drop(&mut self) {
        self.flush();
    }
}

/// libpcap's on-disk record header: seconds, microseconds, captured length, original length.
fn record_header(ts: Duration, captured: usize, original: usize) -> [u8; 16] {
    // Saturate rather than wrap: a frame longer than u32 or a date past 2106 cannot occur, and
    // if one did a clamped value is still a readable file.
    let fields = [
        u32::try_from(ts.as_secs()).unwrap_or(u32::MAX),
        ts.subsec_micros(),
        u32::try_from(captured).unwrap_or(u32::MAX),
        u32::try_from(original).unwrap_or(u32::MAX),
    ];
    let mut out = [0; 16];
    for (chunk, field) in out.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&field.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod test {
    use super::*;
    use pcap_file::pcap::PcapReader;

    /// An ARP who-has 10.0.2.2 from the guest (52:54:00:12:34:56, 10.0.2.100).
    const ARP_REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08,
        0x06, // Ethernet
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // htype, ptype, hlen, plen, request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 100, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 2, 2, // target
    ];

    /// The reply from tapir's gateway MAC 52:55:0a:00:02:02.
    const ARP_REPLY: [u8; 42] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x52, 0x55, 0x0a, 0x00, 0x02, 0x02, 0x08,
        0x06, // Ethernet
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // htype, ptype, hlen, plen, reply
        0x52, 0x55, 0x0a, 0x00, 0x02, 0x02, 10, 0, 2, 2, // sender
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 100, // target
    ];

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tapir-{}-{name}.pcap", std::process::id()))
    }

    #[test]
    fn frames_read_back_with_their_timestamps() {
        let path = temp_path("read-back");
        let t1 = Duration::new(1_700_000_000, 123_456_789);
        let t2 = Duration::new(1_700_000_001, 5_000);
        // A TSO-sized frame: larger than any MTU, still captured whole.
        let mut big = ARP_REQUEST.to_vec();
        big.resize(65_000, 0xab);
        {
            let mut sink = PcapSink::create(&path).unwrap();
            sink.write(t1, &ARP_REQUEST);
            sink.write(t2, &ARP_REPLY);
            sink.write(t2, &big);
            sink.flush();
            assert_eq!(sink.lost_frames(), 0);
        }

        let mut reader = PcapReader::new(File::open(&path).unwrap()).unwrap();
        let header = reader.header();
        assert_eq!(header.datalink, DataLink::ETHERNET);
        assert_eq!(header.snaplen, SNAPLEN);
        let mut frames = Vec::new();
        while let Some(packet) = reader.next_packet() {
            let packet = packet.unwrap();
            frames.push((packet.timestamp, packet.orig_len, packet.data.into_owned()));
        }
        std::fs::remove_file(&path).unwrap();

        assert_eq!(frames.len(), 3);
        // Microsecond resolution: the nanoseconds are cut.
        assert_eq!(
            frames[0],
            (
                Duration::new(1_700_000_000, 123_456_000),
                42,
                ARP_REQUEST.to_vec()
            )
        );
        assert_eq!(frames[1], (t2, 42, ARP_REPLY.to_vec()));
        assert_eq!((frames[2].1, frames[2].2.len()), (65_000, 65_000));
    }

    #[test]
    fn record_header_fields_saturate() {
        let h = record_header(Duration::new(1, 2_000), 3, 4);
        let field = |i: usize| u32::from_ne_bytes(h[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!([field(0), field(1), field(2), field(3)], [1, 2, 3, 4]);
        let far = record_header(Duration::from_secs(u64::MAX), 0, usize::MAX);
        assert_eq!(u32::from_ne_bytes(far[..4].try_into().unwrap()), u32::MAX);
    }

    #[test]
    fn frames_beyond_the_snaplen_are_cut_to_it() {
        let path = temp_path("snaplen");
        {
            let mut sink = PcapSink::create(&path).unwrap();
            sink.write(Duration::ZERO, &vec![0; 300_000]);
        }
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes.len(), 24 + 16 + 262_144);
        let field = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((field(24 + 8), field(24 + 12)), (262_144, 300_000));
    }

    #[test]
    fn a_missing_directory_names_the_path() {
        let path = Path::new("/nonexistent-tapir-dir/capture.pcap");
        let e = PcapSink::create(path).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot create the pcap file /nonexistent-tapir-dir/capture.pcap"
        );
    }

    #[test]
    fn a_full_disk_stops_the_capture_without_failing_the_caller() {
        // /dev/full fails every write with ENOSPC.
        let path = Path::new("/dev/full");
        if !path.exists() {
            eprintln!("skipped: no /dev/full");
            return;
        }
        let mut sink = PcapSink::create(path).unwrap();
        sink.write(Duration::ZERO, &ARP_REQUEST);
        sink.flush(); // the buffered header and frame hit ENOSPC here
        sink.write(Duration::ZERO, &ARP_REPLY);
        sink.write(Duration::ZERO, &ARP_REPLY);
        assert_eq!(sink.lost_frames(), 2);
    }
}

//! RTP and RTCP packets as the relay sees them (RFC 3550 §5.1, §6.4; RFC 5761
//! §4 to tell them apart on a muxed port): only the fixed header is read, to
//! check that a packet is well formed and to learn its stream; the payload is
//! never touched.

/// Why a datagram is not an RTP or RTCP packet (dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("shorter than the 12-byte RTP header")]
    Short,
    #[error("version {0}, not 2")]
    Version(u8),
    #[error("CSRC list or header extension runs past the end")]
    Truncated,
    #[error("padding longer than the payload")]
    Padding,
}

/// What the relay needs of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    Rtp {
        payload_type: u8,
        marker: bool,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
    },
    /// A compound RTCP packet; `ssrc` is its first packet's sender.
    Rtcp { packet_type: u8, ssrc: u32 },
}

/// Reads a datagram from an RTP or RTCP port (with rtcp-mux both arrive on
/// one port: RFC 5761 §4 tells them apart by the payload type byte).
pub fn classify(data: &[u8]) -> Result<Packet, PacketError> {
    let packet = classify_header(data)?;
    if matches!(packet, Packet::Rtp { .. }) && data[0] & 0x20 != 0 {
        let header = header_len(data);
        let pad = usize::from(data[data.len() - 1]);
        if pad == 0 || header + pad > data.len() {
            return Err(PacketError::Padding);
        }
    }
    Ok(packet)
}

/// The RTP header's length: fixed part, CSRCs, extension (already checked
/// to fit by [`classify_header`]).
fn header_len(data: &[u8]) -> usize {
    let mut header = 12 + 4 * usize::from(data[0] & 0x0f);
    if data[0] & 0x10 != 0 {
        let words = usize::from(u16::from_be_bytes([data[header + 2], data[header + 3]]));
        header += 4 + 4 * words;
    }
    header
}

/// Like [`classify`] without checking RTP padding: an SRTP packet's last
/// bytes are its tag, so its padding is checked once it is decrypted.
pub fn classify_header(data: &[u8]) -> Result<Packet, PacketError> {
    if data.len() < 8 {
        return Err(PacketError::Short);
    }
    let version = data[0] >> 6;
    if version != 2 {
        return Err(PacketError::Version(version));
    }
    let second = data[1];
    // RTCP packet types 192–223 occupy the whole second byte (RFC 5761 §4).
    if (192..=223).contains(&second) {
        let ssrc = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let words = usize::from(u16::from_be_bytes([data[2], data[3]]));
        if (words + 1) * 4 > data.len() {
            return Err(PacketError::Truncated);
        }
        return Ok(Packet::Rtcp {
            packet_type: second,
            ssrc,
        });
    }
    if data.len() < 12 {
        return Err(PacketError::Short);
    }
    let csrc = usize::from(data[0] & 0x0f);
    let mut header = 12 + 4 * csrc;
    if data.len() < header {
        return Err(PacketError::Truncated);
    }
    if data[0] & 0x10 != 0 {
        if data.len() < header + 4 {
            return Err(PacketError::Truncated);
        }
        let words = usize::from(u16::from_be_bytes([data[header + 2], data[header + 3]]));
        header += 4 + 4 * words;
        if data.len() < header {
            return Err(PacketError::Truncated);
        }
    }
    Ok(Packet::Rtp {
        payload_type: second & 0x7f,
        marker: second & 0x80 != 0,
        sequence: u16::from_be_bytes([data[2], data[3]]),
        timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rtp(first: u8, second: u8, tail: &[u8]) -> Vec<u8> {
        let mut p = vec![
            first, second, 0x12, 0x34, 0, 0, 0x01, 0x40, 0xde, 0xad, 0xbe, 0xef,
        ];
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn rtp_headers_are_read() {
        let p = rtp(0x80, 0x80 | 101, &[0; 4]);
        assert_eq!(
            classify(&p).unwrap(),
            Packet::Rtp {
                payload_type: 101,
                marker: true,
                sequence: 0x1234,
                timestamp: 320,
                ssrc: 0xdead_beef
            }
        );
        // Two CSRCs and a one-word extension, then 160 bytes of PCMU.
        let mut tail = vec![0; 8];
        tail.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
        tail.extend_from_slice(&[0xff; 160]);
        assert!(matches!(
            classify(&rtp(0x92, 0, &tail)),
            Ok(Packet::Rtp { .. })
        ));
        // Padding of 4 (the count is in the last byte).
        assert!(matches!(
            classify(&rtp(0xa0, 0, &[0, 0, 0, 4])),
            Ok(Packet::Rtp { .. })
        ));
    }

    #[test]
    fn rtcp_is_told_apart_on_a_muxed_port() {
        // A receiver report with no blocks: length 1 (two words).
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 7];
        assert_eq!(
            classify(&rr).unwrap(),
            Packet::Rtcp {
                packet_type: 201,
                ssrc: 7
            }
        );
        assert_eq!(
            classify(&[0x80, 200, 0, 6, 0, 0, 0, 7]),
            Err(PacketError::Truncated)
        );
    }

    #[test]
    fn malformed_packets_say_why() {
        assert_eq!(classify(&[0x80, 0, 1]), Err(PacketError::Short));
        assert_eq!(
            classify(&[0x80, 0, 1, 2, 3, 4, 5, 6, 7]),
            Err(PacketError::Short)
        );
        assert_eq!(classify(&rtp(0x40, 0, &[])), Err(PacketError::Version(1)));
        // STUN (first byte 0x00/0x01) is not RTP either.
        assert_eq!(classify(&rtp(0x00, 1, &[])), Err(PacketError::Version(0)));
        assert_eq!(
            classify(&rtp(0x83, 0, &[0; 8])),
            Err(PacketError::Truncated)
        );
        assert_eq!(
            classify(&rtp(0x90, 0, &[0xbe, 0xde, 0, 2, 0, 0, 0, 0])),
            Err(PacketError::Truncated)
        );
        assert_eq!(
            classify(&rtp(0xa0, 0, &[0, 0, 0, 0])),
            Err(PacketError::Padding)
        );
        assert_eq!(
            classify(&rtp(0xa0, 0, &[0, 0, 0, 9])),
            Err(PacketError::Padding)
        );
        // Every byte string of up to 16 bytes: an answer, never a panic.
        for len in 0..=16usize {
            for seed in 0..=255u8 {
                let data: Vec<u8> = (0..len)
                    .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7))
                    .collect();
                let _ = classify(&data);
            }
        }
    }
}

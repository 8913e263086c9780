//! Pseudonyms kept in state for the alerts that may name them, packed.
//!
//! State keys are hashes (see [`crate::ids`]); a pseudonym itself is kept only where an alert
//! must print it (the SIMs and lines of a churning handset). Pseudonyms are nearly always
//! hashes written in hex after a short prefix (`S3fa9...`, `p:00ab...`), so the hex tail is
//! packed two digits to a byte: a 17-character pseudonym takes 11 bytes. Any other text is
//! kept as it is, so every pseudonym round-trips exactly.

/// Longest name [`pack`] takes: pseudonyms are at most 128 bytes once decoded.
pub const MAX_NAME: usize = 255;

fn is_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn nibble(b: u8) -> u8 {
    if b.is_ascii_digit() {
        b - b'0'
    } else {
        b - b'a' + 10
    }
}

/// Appends `name` packed to `out`: its length, the length of its text prefix, the prefix,
/// then the lowercase-hex tail two digits to a byte.
pub fn pack(name: &str, out: &mut Vec<u8>) {
    let b = name.as_bytes();
    debug_assert!(b.len() <= MAX_NAME, "pseudonyms are at most 128 bytes");
    let b = &b[..b.len().min(MAX_NAME)];
    let hex = b.iter().rev().take_while(|c| is_hex(**c)).count();
    let prefix = b.len() - hex;
    // Both fit: b.len() <= MAX_NAME.
    out.push(b.len() as u8);
    out.push(prefix as u8);
    out.extend_from_slice(&b[..prefix]);
    for pair in b[prefix..].chunks(2) {
        let hi = nibble(pair[0]) << 4;
        out.push(hi | pair.get(1).map_or(0, |c| nibble(*c)));
    }
}

/// Bytes [`pack`] writes for `name`.
pub fn packed_len(name: &str) -> usize {
    let b = name.as_bytes();
    let hex = b.iter().rev().take_while(|c| is_hex(**c)).count();
    2 + (b.len() - hex) + hex.div_ceil(2)
}

/// The first packed name of `bytes` and the bytes after it; `None` if they hold no whole
/// packed name.
pub fn unpack(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let (&prefix, rest) = rest.split_first()?;
    let (len, prefix) = (len as usize, prefix as usize);
    let hex = len.checked_sub(prefix)?;
    let packed = hex.div_ceil(2);
    if rest.len() < prefix + packed {
        return None;
    }
    let mut s = String::with_capacity(len);
    s.push_str(std::str::from_utf8(&rest[..prefix]).ok()?);
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in 0..hex {
        let byte = rest[prefix + i / 2];
        let n = if i % 2 == 0 { byte >> 4 } else { byte & 0xf };
        s.push(DIGITS[n as usize] as char);
    }
    Some((s, &rest[prefix + packed..]))
}

/// Bytes of the first packed name of `bytes`, from its header; `None` if they hold no
/// whole packed name.
pub fn packed_size(bytes: &[u8]) -> Option<usize> {
    let (len, prefix) = (*bytes.first()? as usize, *bytes.get(1)? as usize);
    let size = 2 + prefix + len.checked_sub(prefix)?.div_ceil(2);
    (size <= bytes.len()).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_hex_packs_two_to_a_byte() {
        let names = [
            "Sa6b97bb46fa42579",
            "p:0000000000abcdef",
            "abc",
            "0",
            "",
            "x",
            "L0123456789abcdeF",
            "HEX-UPPER-ABCDEF",
            "ü-not-ascii-1f",
            "s1",
        ];
        let mut buf = Vec::new();
        for n in names {
            let before = buf.len();
            pack(n, &mut buf);
            assert_eq!(buf.len() - before, packed_len(n), "{n}");
        }
        assert_eq!(packed_len("Sa6b97bb46fa42579"), 11);
        let mut rest = &buf[..];
        for n in names {
            let (got, r) = unpack(rest).unwrap();
            assert_eq!(got, n);
            rest = r;
        }
        assert!(rest.is_empty());
        assert!(unpack(&buf[..3]).is_none());
        let mut rest = &buf[..];
        for n in names {
            let size = packed_size(rest).unwrap();
            assert_eq!(size, packed_len(n));
            rest = &rest[size..];
        }
        // Names are matched by their packed bytes: different names never pack alike.
        let packed: Vec<Vec<u8>> = names
            .iter()
            .map(|n| {
                let mut b = Vec::new();
                pack(n, &mut b);
                b
            })
            .collect();
        for (i, a) in packed.iter().enumerate() {
            assert!(packed[i + 1..].iter().all(|b| a != b), "{}", names[i]);
        }
        let mut one = Vec::new();
        pack("Sa6b97bb46fa42579", &mut one);
        assert!(packed_size(&one[..one.len() - 1]).is_none());
    }
}

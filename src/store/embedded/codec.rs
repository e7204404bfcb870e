//! Binary encoding of the embedded store's records. Little-endian, length-prefixed; decoding
//! checks every length and never panics.
//!
//! - a key's record (the redb key is the key itself):
//!   `create_revision i64 | mod_revision i64 | version i64 | lease i64 (0: none) | value…`
//! - a revision's history record: `count u32`, then per event:
//!   `kind u8 (0 put, 1 delete) | key_len u32 | key | body | has_prev u8 | [prev body]`,
//!   where a body is `create i64 | mod i64 | version i64 | lease i64 | value_len u32 | value`.

use crate::store::types::{Event, EventKind, KeyValue, LeaseId};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated")]
    Truncated,
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
    #[error("key is not UTF-8")]
    NotUtf8,
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("length {0} does not fit")]
    Length(usize),
}

fn lease_to_i64(lease: Option<LeaseId>) -> i64 {
    lease.map_or(0, |l| l.0)
}

fn lease_from_i64(raw: i64) -> Option<LeaseId> {
    (raw != 0).then_some(LeaseId(raw))
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), DecodeError> {
    let len = u32::try_from(len).map_err(|_| DecodeError::Length(len))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Encodes a key's current record (without the key).
pub fn encode_kv(kv: &KeyValue, out: &mut Vec<u8>) {
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&lease_to_i64(kv.lease).to_le_bytes());
    out.extend_from_slice(&kv.value);
}

pub fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, DecodeError> {
    let mut r = Reader(bytes);
    let create_revision = r.i64()?;
    let mod_revision = r.i64()?;
    let version = r.i64()?;
    let lease = lease_from_i64(r.i64()?);
    Ok(KeyValue {
        key: key.to_owned(),
        value: r.0.to_vec(),
        create_revision,
        mod_revision,
        version,
        lease,
    })
}

fn encode_body(kv: &KeyValue, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&lease_to_i64(kv.lease).to_le_bytes());
    put_len(out, kv.value.len())?;
    out.extend_from_slice(&kv.value);
    Ok(())
}

/// Encodes the events of one revision. Fails only on a value longer than 4 GiB.
pub fn encode_events(events: &[Event], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    put_len(out, events.len())?;
    for ev in events {
        out.push(match ev.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        put_len(out, ev.kv.key.len())?;
        out.extend_from_slice(ev.kv.key.as_bytes());
        encode_body(&ev.kv, out)?;
        match &ev.prev {
            None => out.push(0),
            Some(prev) => {
                out.push(1);
                encode_body(prev, out)?;
            }
        }
    }
    Ok(())
}

pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let mut r = Reader(bytes);
    let count = r.len()?;
    // Each event takes at least 46 bytes: do not trust `count` for the allocation.
    let mut events = Vec::with_capacity(count.min(bytes.len() / 46 + 1));
    for _ in 0..count {
        let kind = match r.u8()? {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let key_len = r.len()?;
        let key = std::str::from_utf8(r.take(key_len)?)
            .map_err(|_| DecodeError::NotUtf8)?
            .to_owned();
        let kv = r.body(key.clone())?;
        let prev = match r.u8()? {
            0 => None,
            _ => Some(r.body(key)?),
        };
        events.push(Event { kind, kv, prev });
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(events)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = u32::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| DecodeError::Length(usize::MAX))
    }
    fn body(&mut self, key: String) -> Result<KeyValue, DecodeError> {
        let create_revision = self.i64()?;
        let mod_revision = self.i64()?;
        let version = self.i64()?;
        let lease = lease_from_i64(self.i64()?);
        let len = self.len()?;
        let value = self.take(len)?.to_vec();
        Ok(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            version,
            lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: 2,
            mod_revision: rev,
            version: 3,
            lease: Some(LeaseId(7)),
        }
    }

    #[test]
    fn round_trips() {
        let mut buf = Vec::new();
        let k = kv("/a", "{\"x\":1}", 9);
        encode_kv(&k, &mut buf);
        assert_eq!(decode_kv("/a", &buf).unwrap(), k);

        let events = vec![
            Event {
                kind: EventKind::Put,
                kv: kv("/a", "new", 9),
                prev: Some(kv("/a", "old", 8)),
            },
            Event {
                kind: EventKind::Delete,
                kv: KeyValue::tombstone("/b".into(), 9),
                prev: None,
            },
        ];
        let mut buf = Vec::new();
        encode_events(&events, &mut buf).unwrap();
        assert_eq!(decode_events(&buf).unwrap(), events);
        // Every truncation is an error, never a panic.
        for n in 0..buf.len() {
            assert!(decode_events(&buf[..n]).is_err());
        }
        assert!(decode_kv("/a", &[1, 2, 3]).is_err());
        assert!(decode_events(&[255, 255, 255, 255]).is_err());
    }
}

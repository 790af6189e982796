//! The certificate table of an extended attestation report (GHCB specification 56421, "SNP
//! Extended Guest Request"; the certificate buffer of Linux's SNP_GET_EXT_REPORT): entries of
//! a 16-byte GUID, a little-endian u32 offset and a u32 length, the offset counted from the
//! start of the table, ended by an all-zero entry, the certificates after it. Every entry is
//! bounds-checked here: the table comes from the host, which the guest does not trust.

/// The size of one table entry.
pub const ENTRY_LEN: usize = 24;

/// What a table entry holds, by its GUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    Ark,
    /// The ASK; on a host that signs with a VLEK, this entry holds the ASVK.
    Ask,
    Vcek,
    Vlek,
    Crl,
    /// A GUID this plinth does not know (kept, unused).
    Other(String),
}

/// The GUIDs of the GHCB specification, as text.
const GUIDS: [(&str, CertKind); 5] = [
    ("c0b406a4-a803-4952-9743-3fb6014cd0ae", CertKind::Ark),
    ("4ab7b379-bbac-4fe4-a02f-05aef327c782", CertKind::Ask),
    ("63da758d-e664-4564-adc5-f4b93be8accd", CertKind::Vcek),
    ("a8074bc2-a25a-483e-aae6-39c045a0b8a1", CertKind::Vlek),
    ("92f81bc3-5811-4d3d-97ff-d19f88dc67ea", CertKind::Crl),
];

impl CertKind {
    /// The kind of `guid` (text form).
    pub fn from_guid(guid: &str) -> CertKind {
        GUIDS
            .iter()
            .find(|(g, _)| g.eq_ignore_ascii_case(guid))
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| CertKind::Other(guid.to_ascii_lowercase()))
    }

    /// Its GUID as text.
    pub fn guid(&self) -> String {
        match self {
            CertKind::Other(g) => g.clone(),
            known => GUIDS
                .iter()
                .find(|(_, k)| k == known)
                .map(|(g, _)| g.to_string())
                .unwrap_or_default(),
        }
    }
}

/// One certificate of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    pub kind: CertKind,
    pub data: Vec<u8>,
}

/// A table that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertTableError {
    #[error("the table ends after {len} bytes without its terminating all-zero entry")]
    Unterminated { len: usize },
    #[error("entry {index} ({guid}) says its certificate is bytes {offset}..{end}, but the table has {len} bytes")]
    OutOfBounds {
        index: usize,
        guid: String,
        offset: u64,
        end: u64,
        len: usize,
    },
}

/// The entries of `table`, in table order.
pub fn parse(table: &[u8]) -> Result<Vec<TableEntry>, CertTableError> {
    let mut entries = Vec::new();
    for (index, raw) in table.chunks(ENTRY_LEN).enumerate() {
        if raw.len() < ENTRY_LEN {
            break;
        }
        if raw.iter().all(|&b| b == 0) {
            return Ok(entries);
        }
        let guid = guid_text(&raw[..16]);
        let offset = u32::from_le_bytes([raw[16], raw[17], raw[18], raw[19]]);
        let length = u32::from_le_bytes([raw[20], raw[21], raw[22], raw[23]]);
        let end = u64::from(offset) + u64::from(length);
        if end > table.len() as u64 {
            return Err(CertTableError::OutOfBounds {
                index,
                guid,
                offset: offset.into(),
                end,
                len: table.len(),
            });
        }
        entries.push(TableEntry {
            kind: CertKind::from_guid(&guid),
            data: table[offset as usize..end as usize].to_vec(),
        });
    }
    Err(CertTableError::Unterminated { len: table.len() })
}

/// A table of `entries` (what a host would hand a guest): entries, terminator, then the data.
pub fn encode(entries: &[TableEntry]) -> Vec<u8> {
    let mut offset = (entries.len() + 1) * ENTRY_LEN;
    let mut head = Vec::with_capacity(offset);
    let mut data = Vec::new();
    for e in entries {
        head.extend_from_slice(&guid_bytes(&e.kind.guid()));
        head.extend_from_slice(&(offset as u32).to_le_bytes());
        head.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        data.extend_from_slice(&e.data);
        offset += e.data.len();
    }
    head.extend_from_slice(&[0; ENTRY_LEN]);
    head.extend_from_slice(&data);
    head
}

/// `c0b406a4-a803-...` from the 16 bytes of the table (which hold the GUID in text order).
fn guid_text(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn guid_bytes(text: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    if let Ok(b) = hex::decode(digits) {
        if b.len() == 16 {
            out.copy_from_slice(&b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let entries = vec![
            TableEntry {
                kind: CertKind::Ark,
                data: vec![1; 25],
            },
            TableEntry {
                kind: CertKind::Vcek,
                data: vec![2; 15],
            },
            TableEntry {
                kind: CertKind::Other("fbb6ed74-e73e-44ab-8893-4252792d737a".into()),
                data: vec![],
            },
        ];
        let table = encode(&entries);
        assert_eq!(parse(&table).unwrap(), entries);
        // The sev crate's own test table: its first GUID is the ARK's, in text order.
        assert_eq!(&table[..4], &[0xc0, 0xb4, 0x06, 0xa4]);

        let mut bad = table.clone();
        bad[20] = 0xff; // the ARK's length
        assert!(matches!(
            parse(&bad),
            Err(CertTableError::OutOfBounds { index: 0, .. })
        ));
        let mut unterminated = [0u8; ENTRY_LEN];
        unterminated[0] = 1;
        assert_eq!(
            parse(&unterminated),
            Err(CertTableError::Unterminated { len: ENTRY_LEN })
        );
        assert_eq!(parse(&[0; 24]).unwrap(), []);
    }
}

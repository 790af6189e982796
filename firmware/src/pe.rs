//! The one reader of PE/COFF images (UEFI applications: shim, systemd-boot, systemd-stub and
//! the UKIs built from it), for UKI assembly, the Authenticode digest, the PCR 11 model and
//! `measure`. Images come from downloaded releases, so the bytes are hostile: every offset and
//! size is checked against the file, nothing panics, and nothing is allocated beyond what the
//! file holds (the section table is checked to fit before it is read). Offsets follow the
//! Microsoft PE format specification.

use std::borrow::Cow;
use std::ops::Range;

/// The most sections a PE image may have here: systemd-stub's `pe.c` (`MAX_SECTIONS`) and the
/// Windows loader both refuse more than 96.
pub const MAX_SECTIONS: usize = 96;

// Offsets are relative to the start of the structure named in the constant.
pub const DOS_HEADER_SIZE: usize = 0x40;
pub const DOS_E_LFANEW: usize = 0x3c;
pub const PE_SIGNATURE: [u8; 4] = *b"PE\0\0";
pub const COFF_HEADER_SIZE: usize = 20;
pub const COFF_NUMBER_OF_SECTIONS: usize = 2;
pub const COFF_POINTER_TO_SYMBOL_TABLE: usize = 8;
pub const COFF_NUMBER_OF_SYMBOLS: usize = 12;
pub const COFF_SIZE_OF_OPTIONAL_HEADER: usize = 16;
pub const COFF_CHARACTERISTICS: usize = 18;
pub const COFF_SYMBOL_SIZE: u64 = 18;
pub const IMAGE_FILE_LOCAL_SYMS_STRIPPED: u16 = 0x0008;
pub const OPT_MAGIC_PE32: u16 = 0x10b;
pub const OPT_MAGIC_PE32_PLUS: u16 = 0x20b;
pub const OPT_SIZE_OF_CODE: usize = 4;
pub const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
pub const OPT_SECTION_ALIGNMENT: usize = 32;
pub const OPT_FILE_ALIGNMENT: usize = 36;
pub const OPT_SIZE_OF_IMAGE: usize = 56;
pub const OPT_SIZE_OF_HEADERS: usize = 60;
pub const OPT_CHECKSUM: usize = 64;
/// `NumberOfRvaAndSizes` of a PE32+ optional header (PE32: 92).
pub const OPT_NUMBER_OF_RVA_AND_SIZES: usize = 108;
/// The data directories of a PE32+ optional header (PE32: 96).
pub const OPT_DATA_DIRECTORIES: usize = 112;
pub const DATA_DIRECTORY_SIZE: usize = 8;
pub const DIR_SECURITY: usize = 4;
pub const DIR_DEBUG: usize = 6;
pub const SECTION_HEADER_SIZE: usize = 40;
pub const SH_VIRTUAL_SIZE: usize = 8;
pub const SH_VIRTUAL_ADDRESS: usize = 12;
pub const SH_SIZE_OF_RAW_DATA: usize = 16;
pub const SH_POINTER_TO_RAW_DATA: usize = 20;
pub const SH_POINTER_TO_RELOCATIONS: usize = 24;
pub const SH_POINTER_TO_LINENUMBERS: usize = 28;
pub const SH_CHARACTERISTICS: usize = 36;

/// Why bytes are not a PE image this reader accepts.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE file: expected \"MZ\" at offset 0, found {found:02x?}")]
    NotMz { found: Vec<u8> },
    #[error("truncated PE file: the {what} ends at byte {end} but the file has {len} bytes")]
    Truncated {
        what: &'static str,
        end: u64,
        len: u64,
    },
    #[error("the PE {what} ends at byte {end}, beyond the first {read} bytes read of the file")]
    HeadersBeyondRead {
        what: &'static str,
        end: u64,
        read: u64,
    },
    #[error(
        "not a PE file: expected \"PE\\0\\0\" at offset {offset:#x} (e_lfanew), found {found:02x?}"
    )]
    NoPeSignature { offset: u64, found: [u8; 4] },
    #[error("not a PE image: expected optional header magic {OPT_MAGIC_PE32_PLUS:#x} (PE32+) or {OPT_MAGIC_PE32:#x} (PE32), found {found:#x}")]
    UnknownMagic { found: u16 },
    #[error(
        "PE optional header too small: {found} bytes, a PE32+ header needs at least {expected}"
    )]
    OptionalHeaderTooSmall { expected: u16, found: u16 },
    #[error(
        "too many sections: the PE image has {found} sections, at most {MAX_SECTIONS} are accepted"
    )]
    TooManySections { found: usize },
    #[error(
        "PE section {name:?}: its data (bytes {start}..{end}) lies outside the file of {len} bytes"
    )]
    SectionOutOfFile {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("PE section {name:?}: VirtualSize {virtual_size} exceeds its {from_file} bytes of data by more than {MAX_ZERO_FILL}, which a UEFI image does not need")]
    ZeroFillTooLarge {
        name: String,
        virtual_size: u32,
        from_file: u64,
    },
}

/// The most zero bytes a section may be mapped with past its data (a `.bss`): a kernel's
/// needs a few MiB. Beyond it a section's bytes are refused, so that a small hostile file
/// cannot make [`PeSection::data`] allocate gigabytes.
pub const MAX_ZERO_FILL: u64 = 64 << 20;

/// One entry of a PE section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeSection {
    /// The name with its trailing NULs removed (lossy UTF-8).
    pub name: String,
    /// The name field as stored.
    pub raw_name: [u8; 8],
    /// RVA of the section in memory.
    pub virtual_address: u32,
    /// Size in memory (`VirtualSize`): for the sections of a UKI, the exact content size.
    pub virtual_size: u32,
    /// File offset of the section's data (`PointerToRawData`).
    pub raw_offset: u32,
    /// Size of the data in the file (`SizeOfRawData`), a multiple of `FileAlignment`.
    pub raw_size: u32,
    /// `IMAGE_SCN_*` flags.
    pub characteristics: u32,
}

impl PeSection {
    /// Where the section lies in memory (RVAs), by its `VirtualSize`.
    pub fn memory_range(&self) -> Range<u64> {
        let start = u64::from(self.virtual_address);
        start..start + u64::from(self.virtual_size)
    }

    /// Where the section's data lies in the file.
    pub fn file_range(&self) -> Range<u64> {
        let start = u64::from(self.raw_offset);
        start..start + u64::from(self.raw_size)
    }

    /// Refuses a section mapped with more than [`MAX_ZERO_FILL`] zero bytes past its data.
    pub fn check_zero_fill(&self) -> Result<(), PeError> {
        let from_file = u64::from(self.virtual_size.min(self.raw_size));
        if u64::from(self.virtual_size) - from_file > MAX_ZERO_FILL {
            return Err(PeError::ZeroFillTooLarge {
                name: self.name.clone(),
                virtual_size: self.virtual_size,
                from_file,
            });
        }
        Ok(())
    }

    /// The section's `VirtualSize` bytes as a loader maps them: the raw data, zero-filled past
    /// `SizeOfRawData`. This is what systemd-stub reads and measures. `pe` is the whole image.
    pub fn data<'a>(&self, pe: &'a [u8]) -> Result<Cow<'a, [u8]>, PeError> {
        self.check_zero_fill()?;
        let size = self.virtual_size as usize;
        let from_file = size.min(self.raw_size as usize);
        if from_file == 0 {
            return Ok(Cow::Owned(vec![0; size]));
        }
        let range = self.raw_offset as usize..self.raw_offset as usize + from_file;
        let Some(bytes) = pe.get(range.clone()) else {
            return Err(PeError::SectionOutOfFile {
                name: self.name.clone(),
                start: range.start as u64,
                end: range.end as u64,
                len: pe.len() as u64,
            });
        };
        if from_file == size {
            Ok(Cow::Borrowed(bytes))
        } else {
            let mut v = Vec::with_capacity(size);
            v.extend_from_slice(bytes);
            v.resize(size, 0);
            Ok(Cow::Owned(v))
        }
    }
}

/// The headers of a PE image: where its structures lie in the file and the fields plinth uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeImage {
    /// Start of the COFF file header (just after the signature).
    pub coff: usize,
    /// Start of the optional header.
    pub opt: usize,
    /// Start of the section table.
    pub table: usize,
    /// The optional header magic: [`OPT_MAGIC_PE32_PLUS`] or [`OPT_MAGIC_PE32`].
    pub magic: u16,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub pointer_to_symbol_table: u32,
    pub number_of_symbols: u32,
    /// File offset of the first data directory.
    pub data_directories: usize,
    /// How many data directories there are: the lesser of `NumberOfRvaAndSizes` and what fits
    /// in the optional header.
    pub number_of_directories: usize,
    /// (file offset, size) of the certificate table, (0, 0) if none.
    pub security: (u32, u32),
    /// Size of the debug directory, 0 if none.
    pub debug_size: u32,
    /// The section table, in table order; every section's raw data lies in the file.
    pub sections: Vec<PeSection>,
}

impl PeImage {
    /// File offset of the optional header's `CheckSum` field.
    pub fn checksum_offset(&self) -> usize {
        self.opt + OPT_CHECKSUM
    }

    /// File offset of data directory `i` (8 bytes: RVA or file offset, size), if present.
    pub fn directory_offset(&self, i: usize) -> Option<usize> {
        (i < self.number_of_directories).then(|| self.data_directories + i * DATA_DIRECTORY_SIZE)
    }
}

fn rd16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `pe[..end]` must be there: within what was read and within the file.
fn need(pe: &[u8], file_len: u64, end: usize, what: &'static str) -> Result<(), PeError> {
    if end <= pe.len() {
        Ok(())
    } else if end as u64 > file_len {
        Err(PeError::Truncated {
            what,
            end: end as u64,
            len: file_len,
        })
    } else {
        Err(PeError::HeadersBeyondRead {
            what,
            end: end as u64,
            read: pe.len() as u64,
        })
    }
}

/// Reads the headers and section table of the PE32+ or PE32 image `pe`. Every structure read
/// is checked to lie in `pe` first (the `rd*` helpers below index only checked ranges).
pub fn parse(pe: &[u8]) -> Result<PeImage, PeError> {
    parse_headers(pe, pe.len() as u64)
}

/// [`parse`] from `head`, the first bytes of a file of `file_len` bytes (a bounded read of a
/// large image): every header must lie in `head`, every section's raw data in the file.
pub fn parse_headers(pe: &[u8], file_len: u64) -> Result<PeImage, PeError> {
    if pe.get(..2) != Some(b"MZ") {
        return Err(PeError::NotMz {
            found: pe.iter().take(2).copied().collect(),
        });
    }
    need(pe, file_len, DOS_HEADER_SIZE, "DOS header")?;
    // u32 offsets plus small constants cannot overflow a 64-bit usize.
    let sig = rd32(pe, DOS_E_LFANEW) as usize;
    need(
        pe,
        file_len,
        sig + 4 + COFF_HEADER_SIZE,
        "PE signature and COFF header",
    )?;
    let found: [u8; 4] = [pe[sig], pe[sig + 1], pe[sig + 2], pe[sig + 3]];
    if found != PE_SIGNATURE {
        return Err(PeError::NoPeSignature {
            offset: sig as u64,
            found,
        });
    }
    let coff = sig + 4;
    let n_sections = rd16(pe, coff + COFF_NUMBER_OF_SECTIONS) as usize;
    let opt_size = rd16(pe, coff + COFF_SIZE_OF_OPTIONAL_HEADER);
    let opt = coff + COFF_HEADER_SIZE;
    need(pe, file_len, opt + 2, "optional header magic")?;
    let magic = rd16(pe, opt);
    let (rva_count_at, dirs_at) = match magic {
        OPT_MAGIC_PE32_PLUS => (OPT_NUMBER_OF_RVA_AND_SIZES, OPT_DATA_DIRECTORIES),
        OPT_MAGIC_PE32 => (92, 96),
        found => return Err(PeError::UnknownMagic { found }),
    };
    if usize::from(opt_size) < dirs_at {
        return Err(PeError::OptionalHeaderTooSmall {
            expected: dirs_at as u16,
            found: opt_size,
        });
    }
    let table = opt + usize::from(opt_size);
    need(pe, file_len, table, "optional header")?;
    if n_sections > MAX_SECTIONS {
        return Err(PeError::TooManySections { found: n_sections });
    }
    need(
        pe,
        file_len,
        table + n_sections * SECTION_HEADER_SIZE,
        "section table",
    )?;

    let number_of_directories = (rd32(pe, opt + rva_count_at) as usize)
        .min((usize::from(opt_size) - dirs_at) / DATA_DIRECTORY_SIZE);
    let dir = |i: usize| -> (u32, u32) {
        if i < number_of_directories {
            let at = opt + dirs_at + i * DATA_DIRECTORY_SIZE;
            (rd32(pe, at), rd32(pe, at + 4))
        } else {
            (0, 0)
        }
    };

    let mut sections = Vec::with_capacity(n_sections);
    for i in 0..n_sections {
        let h = table + i * SECTION_HEADER_SIZE;
        let mut raw_name = [0u8; 8];
        raw_name.copy_from_slice(&pe[h..h + 8]);
        let end = raw_name.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let [virtual_size, virtual_address, raw_size, raw_offset, characteristics] = [
            SH_VIRTUAL_SIZE,
            SH_VIRTUAL_ADDRESS,
            SH_SIZE_OF_RAW_DATA,
            SH_POINTER_TO_RAW_DATA,
            SH_CHARACTERISTICS,
        ]
        .map(|field| rd32(pe, h + field));
        let s = PeSection {
            name: String::from_utf8_lossy(&raw_name[..end]).into_owned(),
            raw_name,
            virtual_size,
            virtual_address,
            raw_size,
            raw_offset,
            characteristics,
        };
        let range = s.file_range();
        if s.raw_size > 0 && range.end > file_len {
            return Err(PeError::SectionOutOfFile {
                name: s.name,
                start: range.start,
                end: range.end,
                len: file_len,
            });
        }
        sections.push(s);
    }

    let [section_alignment, file_alignment, size_of_image, size_of_headers] = [
        OPT_SECTION_ALIGNMENT,
        OPT_FILE_ALIGNMENT,
        OPT_SIZE_OF_IMAGE,
        OPT_SIZE_OF_HEADERS,
    ]
    .map(|field| rd32(pe, opt + field));
    let [pointer_to_symbol_table, number_of_symbols] =
        [COFF_POINTER_TO_SYMBOL_TABLE, COFF_NUMBER_OF_SYMBOLS].map(|field| rd32(pe, coff + field));
    Ok(PeImage {
        coff,
        opt,
        table,
        magic,
        section_alignment,
        file_alignment,
        size_of_image,
        size_of_headers,
        pointer_to_symbol_table,
        number_of_symbols,
        data_directories: opt + dirs_at,
        number_of_directories,
        security: dir(DIR_SECURITY),
        debug_size: dir(DIR_DEBUG).1,
        sections,
    })
}

/// The section table of a PE image, in table order.
pub fn read_sections(pe: &[u8]) -> Result<Vec<PeSection>, PeError> {
    Ok(parse(pe)?.sections)
}

/// The standard PE checksum of `pe` (the algorithm of `imagehlp!CheckSumMappedFile`): the
/// 16-bit one's-complement-style sum of the file's little-endian words, carries folded back
/// in, with the `CheckSum` field itself counted as zero and a trailing odd byte padded with
/// zero; plus the file length.
pub fn checksum(pe: &[u8]) -> Result<u32, PeError> {
    let h = parse(pe)?;
    Ok(checksum_skipping(pe, h.checksum_offset()))
}

/// [`checksum`] with the 4-byte field at `field` counted as zero (for an image whose headers
/// were already read).
pub fn checksum_skipping(pe: &[u8], field: usize) -> u32 {
    let checksum_field = field..field.saturating_add(4);
    let byte = |at: usize| -> u8 {
        if checksum_field.contains(&at) {
            0
        } else {
            pe.get(at).copied().unwrap_or(0)
        }
    };
    let mut sum: u64 = 0;
    for at in (0..pe.len()).step_by(2) {
        sum += u64::from(u16::from_le_bytes([byte(at), byte(at + 1)]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

/// Test support for the readers of PE images (plinth's and its tests'): crafted images.
pub mod testing {
    /// A minimal x86-64 PE32+ image of `len` bytes (at least 0x400), filled with a pattern
    /// past its headers: `sections` as (name, VirtualSize, PointerToRawData, SizeOfRawData),
    /// each at VirtualAddress 0x1000 × (its index + 1); alignments 0x1000 and 0x200.
    pub fn image(sections: &[(&str, u32, u32, u32)], len: usize) -> Vec<u8> {
        use super::*;
        let mut b: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        b[..0x400].fill(0);
        b[..2].copy_from_slice(b"MZ");
        b[DOS_E_LFANEW..DOS_E_LFANEW + 4].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x40..0x44].copy_from_slice(&PE_SIGNATURE);
        let coff = 0x44;
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + COFF_HEADER_SIZE;
        b[opt..opt + 2].copy_from_slice(&OPT_MAGIC_PE32_PLUS.to_le_bytes());
        b[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        b[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes());
        b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        for (i, (name, vsize, offset, raw)) in sections.iter().enumerate() {
            let h = opt + 240 + i * SECTION_HEADER_SIZE;
            b[h..h + name.len()].copy_from_slice(name.as_bytes());
            b[h + 8..h + 12].copy_from_slice(&vsize.to_le_bytes());
            b[h + 12..h + 16].copy_from_slice(&(0x1000 * (i as u32 + 1)).to_le_bytes());
            b[h + 16..h + 20].copy_from_slice(&raw.to_le_bytes());
            b[h + 20..h + 24].copy_from_slice(&offset.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PE32+ image: headers at 0x40, 240-byte optional header, `n` sections of 0x200 bytes.
    fn synth(n: u16) -> Vec<u8> {
        let mut pe = vec![0u8; 0x400 + usize::from(n) * 0x200];
        pe[..2].copy_from_slice(b"MZ");
        pe[DOS_E_LFANEW..DOS_E_LFANEW + 4].copy_from_slice(&0x40u32.to_le_bytes());
        pe[0x40..0x44].copy_from_slice(&PE_SIGNATURE);
        let coff = 0x44;
        pe[coff + 2..coff + 4].copy_from_slice(&n.to_le_bytes());
        pe[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + COFF_HEADER_SIZE;
        pe[opt..opt + 2].copy_from_slice(&OPT_MAGIC_PE32_PLUS.to_le_bytes());
        pe[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        for i in 0..usize::from(n) {
            let sh = opt + 240 + i * SECTION_HEADER_SIZE;
            pe[sh..sh + 3].copy_from_slice(b".s0");
            pe[sh + SH_SIZE_OF_RAW_DATA..sh + 20].copy_from_slice(&0x200u32.to_le_bytes());
            let at = (0x400 + i * 0x200) as u32;
            pe[sh + SH_POINTER_TO_RAW_DATA..sh + 24].copy_from_slice(&at.to_le_bytes());
        }
        pe
    }

    #[test]
    fn reads_a_well_formed_image() {
        let img = parse(&synth(2)).unwrap();
        assert_eq!(img.sections.len(), 2);
        assert_eq!(img.sections[1].raw_offset, 0x600);
        assert_eq!(img.checksum_offset(), 0x58 + OPT_CHECKSUM);
        assert_eq!(img.directory_offset(DIR_SECURITY), Some(0x58 + 112 + 32));
    }

    #[test]
    fn truncated_header() {
        let pe = synth(1);
        for cut in [0, 1, 0x3f, 0x50, 0x60, 0x100] {
            assert!(parse(&pe[..cut]).is_err(), "cut at {cut:#x}");
        }
    }

    #[test]
    fn e_lfanew_out_of_range() {
        let mut pe = synth(1);
        pe[DOS_E_LFANEW..DOS_E_LFANEW + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&pe),
            Err(PeError::Truncated {
                what: "PE signature and COFF header",
                ..
            })
        ));
    }

    #[test]
    fn section_table_past_end() {
        let pe = synth(2);
        let err = parse(&pe[..0x58 + 240 + 50]).unwrap_err();
        assert!(
            matches!(
                err,
                PeError::Truncated {
                    what: "section table",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn section_raw_data_past_end() {
        let mut pe = synth(1);
        let sh = 0x58 + 240;
        pe[sh + SH_POINTER_TO_RAW_DATA..sh + 24].copy_from_slice(&0xffff_fe00u32.to_le_bytes());
        let err = parse(&pe).unwrap_err();
        assert!(matches!(err, PeError::SectionOutOfFile { .. }), "{err}");
        // An empty section may point anywhere: it has no data to read.
        pe[sh + SH_SIZE_OF_RAW_DATA..sh + 20].fill(0);
        assert!(parse(&pe).is_ok());
    }

    #[test]
    fn absurd_number_of_sections() {
        let mut pe = synth(1);
        pe[0x46..0x48].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            parse(&pe).unwrap_err(),
            PeError::TooManySections { found: 65535 }
        );
    }

    #[test]
    fn a_huge_zero_fill_is_refused_before_anything_is_allocated() {
        let mut pe = synth(1);
        let sh = 0x58 + 240;
        pe[sh + SH_VIRTUAL_SIZE..sh + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let img = parse(&pe).unwrap();
        let err = img.sections[0].data(&pe).unwrap_err();
        assert!(matches!(err, PeError::ZeroFillTooLarge { .. }), "{err}");
        // Within the cap the loader's zero fill is given.
        let small = 0x200 + 0x1000u32;
        pe[sh + SH_VIRTUAL_SIZE..sh + 12].copy_from_slice(&small.to_le_bytes());
        let img = parse(&pe).unwrap();
        assert_eq!(img.sections[0].data(&pe).unwrap().len(), small as usize);
    }

    #[test]
    fn headers_beyond_a_bounded_read_are_named_as_such() {
        let pe = synth(2);
        // All of the file was not read: the section table lies past what was.
        let err = parse_headers(&pe[..0x150], pe.len() as u64).unwrap_err();
        assert!(
            matches!(
                err,
                PeError::HeadersBeyondRead {
                    what: "section table",
                    read: 0x150,
                    ..
                }
            ),
            "{err}"
        );
        // Sections are checked against the file, not the bytes read.
        assert_eq!(
            parse_headers(&pe[..0x400], pe.len() as u64)
                .unwrap()
                .sections
                .len(),
            2
        );
        let err = parse_headers(&pe[..0x400], 0x500).unwrap_err();
        assert!(
            matches!(err, PeError::SectionOutOfFile { len: 0x500, .. }),
            "{err}"
        );
    }
}

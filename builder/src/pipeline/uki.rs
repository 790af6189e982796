//! Unified kernel images (UKIs): systemd-stub with the kernel, initrd, command line,
//! os-release and kernel release appended as PE sections, one EFI binary that the firmware or
//! systemd-boot starts and that systemd-stub measures into TPM PCR 11.
//!
//! Debian 12 ships no `ukify`, so this module does by hand, with no PE crate, what systemd's
//! `src/ukify/ukify.py` (`pe_add_sections`) does with `pefile`, reading the stub with
//! [`plinth_firmware::pe`]:
//!
//! - The stub's own sections (`.text`, `.reloc`, `.data`, …, `.sbat`, `.sdmagic`) keep their
//!   headers and bytes. A COFF symbol table at the very end of the stub (Debian's 252 stub
//!   has one: objcopy leaves it) is dropped, as ukify does, so that no unmapped bytes sit
//!   between sections; the header then says `IMAGE_FILE_LOCAL_SYMS_STRIPPED`.
//! - New section headers go right after the stub's in the section table. They must fit below
//!   `SizeOfHeaders` (rounded up to `FileAlignment`, as ukify does); if they do not, the
//!   headers grow by whole `FileAlignment` units and the stub's section data moves down in
//!   the file (never in memory), as long as the headers still end below the first section's
//!   `VirtualAddress` (else [`UkiError::NoHeaderRoom`]).
//! - Sections are added in ukify's order: `.osrel`, `.cmdline`, `.uname`, `.initrd`, and
//!   `.linux` last (ukify puts `.linux` after everything else; see [`build_uki`]). Empty
//!   contents are left out, as ukify skips empty inputs and systemd-stub treats a section of
//!   size 0 as absent; an empty `.linux` is an error.
//! - Each new section starts at the next `SectionAlignment` boundary after everything the stub
//!   occupies in memory (its `SizeOfImage`, and every section's virtual and raw extent: a
//!   conservative reading, so no loader can see two sections overlap); its raw data starts at
//!   the next `FileAlignment` boundary of the file; `SizeOfRawData` is the content size
//!   rounded up to `FileAlignment` (zero padded); `VirtualSize` is the exact content size.
//!   systemd-stub 252 uses `VirtualSize` as the size of every section it reads and measures,
//!   so it must not include padding. (Debian's stub has `SectionAlignment` 0x200 but a
//!   `SizeOfImage` of 0x19300 and `.sdmagic` at 0x19100, neither aligned: the first new section
//!   lands at 0x19400, where ukify, counting only `VirtualSize`, would pick 0x19200.)
//! - Characteristics as ukify: `.linux` is `IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_READ` (ukify:
//!   "old kernels that use EFI handover protocol will be executed inline"), every other new
//!   section `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`.
//! - `NumberOfSections`, `SizeOfImage` (end of the last section, aligned to
//!   `SectionAlignment`) and `SizeOfHeaders` are updated; `SizeOfCode` and
//!   `SizeOfInitializedData` grow by the `SizeOfRawData` of the new code and data sections
//!   (objcopy's rule, which is how the stub's own values were computed).
//! - The COFF `TimeDateStamp` is the stub's (0 in Debian's). The optional header `CheckSum` is
//!   recomputed with the standard PE algorithm ([`pe_checksum`]), as objcopy and link.exe do;
//!   it is a pure function of the bytes, so the output stays deterministic.
//!
//! systemd-stub 252 needs no particular alignment of `.linux`: with a kernel that has a PE
//! header and the `LINUX_INITRD_MEDIA` protocol (Linux 5.8 and newer) it hands the section to
//! the firmware's `LoadImage`, which copies and relocates it (`src/boot/efi/linux.c`).
//!
//! What systemd-stub 252 extends into PCR 11 from the UKI is modelled in
//! [`plinth_firmware::systemd_stub`] ([`predict_pcr11`]).

use plinth_firmware::pe::{self, PeError, PeImage, *};
pub use plinth_firmware::pe::{PeSection, MAX_SECTIONS};
pub use plinth_firmware::systemd_stub::{
    pcr11_after_phases, predict_pcr11, stub_pcr11_events, STUB_252_MEASURED_SECTIONS,
};
use std::path::{Path, PathBuf};

/// Debian's systemd-stub (package `systemd-boot-efi`).
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Section characteristic: the section contains executable code.
pub const IMAGE_SCN_CNT_CODE: u32 = 0x0000_0020;
/// Section characteristic: the section contains initialized data.
pub const IMAGE_SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
/// Section characteristic: the section can be read.
pub const IMAGE_SCN_MEM_READ: u32 = 0x4000_0000;

/// The contents of a UKI's sections (see [`build_uki`]).
#[derive(Debug, Clone, Copy)]
pub struct UkiSections<'a> {
    /// `.osrel`: the os-release file.
    pub osrel: &'a [u8],
    /// `.cmdline`: the kernel command line, as is (no trailing NUL is added).
    pub cmdline: &'a str,
    /// `.uname`: the kernel release (`uname -r`).
    pub uname: &'a str,
    /// `.linux`: the kernel (bzImage with its PE header).
    pub linux: &'a [u8],
    /// `.initrd`: the initrd.
    pub initrd: &'a [u8],
    /// `.pcrpkey`: the release key's public PEM, or empty for an unsigned UKI.
    pub pcrpkey: &'a [u8],
    /// `.pcrsig`: the release key's signature of the PCR values this UKI leaves in the
    /// initrd (`tpm2-pcr-signature.json`), or empty. The stub does not measure it.
    pub pcrsig: &'a [u8],
}

/// A section to append with [`add_sections`].
#[derive(Debug, Clone, Copy)]
pub struct NewSection<'a> {
    /// At most 8 printable ASCII bytes (the stub reads no long names).
    pub name: &'a str,
    pub data: &'a [u8],
    /// `IMAGE_SCN_*` flags.
    pub characteristics: u32,
}

/// Why a PE file could not be read or a UKI could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error(transparent)]
    Pe(#[from] PeError),
    #[error("not a PE32+ image: expected optional header magic {expected:#x}, found {found:#x}{}",
        if *found == OPT_MAGIC_PE32 { " (PE32, a 32-bit image)" } else { "" })]
    NotPe32Plus { expected: u16, found: u16 },
    #[error("bad PE alignment: {what} is {found:#x}, expected a non-zero power of two")]
    BadAlignment { what: &'static str, found: u32 },
    #[error("bad section name {name:?}: expected 1 to 8 printable ASCII bytes, found {len} bytes")]
    BadSectionName { name: String, len: usize },
    #[error("section {name} is empty: a UKI needs its contents")]
    EmptySection { name: String },
    #[error("section {name} given twice: each section may be added once")]
    DuplicateSection { name: String },
    #[error("the stub already has a {name} section: expected a bare systemd-stub, not a UKI\n  hint: pass the stub ({DEFAULT_STUB})")]
    StubHasSection { name: String },
    #[error("the stub is signed (certificate table at file offset {offset:#x}, {size} bytes): expected an unsigned stub\n  hint: sign the UKI after building it, not the stub")]
    SignedStub { offset: u32, size: u32 },
    #[error("too many sections: the stub has {existing}, adding {adding} makes {} but a PE image holds at most {max}", existing + adding)]
    TooManySections {
        existing: usize,
        adding: usize,
        max: usize,
    },
    #[error("no room for {adding} more section headers: the table would end at byte {table_end:#x}, but the headers must end by {limit:#x} ({why})")]
    NoHeaderRoom {
        adding: usize,
        table_end: u64,
        limit: u64,
        why: &'static str,
    },
    #[error("header bytes {offset:#x}..{end:#x}, where the new section headers go, are in use (expected zeros, found {found:02x?}…)", end = offset + len)]
    HeaderSpaceInUse {
        offset: u64,
        len: u64,
        found: Vec<u8>,
    },
    #[error("{what} is {size} bytes: a PE image addresses at most 4 GiB")]
    TooLarge { what: String, size: u64 },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

// Fields of the image being assembled, at offsets the reader has checked.
fn rd16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn wr16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn wr32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn align_up(v: u64, align: u32) -> u64 {
    let a = u64::from(align);
    v.div_ceil(a) * a
}

fn to_u32(v: u64, what: impl Into<String>) -> Result<u32, UkiError> {
    u32::try_from(v).map_err(|_| UkiError::TooLarge {
        what: what.into(),
        size: v,
    })
}

/// The headers of the PE32+ image `pe` ([`pe::parse`]), refusing what no UKI can be built
/// from: a PE32 image, or alignments that are not powers of two.
fn parse_headers(pe: &[u8]) -> Result<PeImage, UkiError> {
    let h = pe::parse(pe)?;
    if h.magic != OPT_MAGIC_PE32_PLUS {
        return Err(UkiError::NotPe32Plus {
            expected: OPT_MAGIC_PE32_PLUS,
            found: h.magic,
        });
    }
    for (what, found) in [
        ("SectionAlignment", h.section_alignment),
        ("FileAlignment", h.file_alignment),
    ] {
        if !found.is_power_of_two() {
            return Err(UkiError::BadAlignment { what, found });
        }
    }
    Ok(h)
}

/// The section table of a PE32+ image, in table order.
pub fn read_sections(pe: &[u8]) -> Result<Vec<PeSection>, UkiError> {
    Ok(parse_headers(pe)?.sections)
}

/// The standard PE checksum of `pe` (the algorithm of `imagehlp!CheckSumMappedFile`): the
/// 16-bit one's-complement-style sum of the file's little-endian words, carries folded back
/// in, with the `CheckSum` field itself counted as zero and a trailing odd byte padded with
/// zero; plus the file length.
pub fn pe_checksum(pe: &[u8]) -> Result<u32, UkiError> {
    let h = parse_headers(pe)?;
    Ok(pe::checksum_skipping(pe, h.checksum_offset()))
}

fn check_name(name: &str) -> Result<(), UkiError> {
    let ok = !name.is_empty() && name.len() <= 8 && name.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(UkiError::BadSectionName {
            name: name.to_owned(),
            len: name.len(),
        })
    }
}

/// Appends `new` to the PE32+ image `stub` as sections, laid out as described in the module
/// documentation, and returns the new image. `stub` itself is not changed.
pub fn add_sections(stub: &[u8], new: &[NewSection]) -> Result<Vec<u8>, UkiError> {
    for (i, s) in new.iter().enumerate() {
        check_name(s.name)?;
        if s.data.is_empty() {
            return Err(UkiError::EmptySection {
                name: s.name.to_owned(),
            });
        }
        if new[..i].iter().any(|o| o.name == s.name) {
            return Err(UkiError::DuplicateSection {
                name: s.name.to_owned(),
            });
        }
    }
    let h = parse_headers(stub)?;
    if h.security.0 != 0 || h.security.1 != 0 {
        return Err(UkiError::SignedStub {
            offset: h.security.0,
            size: h.security.1,
        });
    }
    if let Some(s) = new
        .iter()
        .find(|s| h.sections.iter().any(|o| o.name == s.name))
    {
        return Err(UkiError::StubHasSection {
            name: s.name.to_owned(),
        });
    }
    let n_old = h.sections.len();
    let n_total = n_old + new.len();
    if n_total > MAX_SECTIONS {
        return Err(UkiError::TooManySections {
            existing: n_old,
            adding: new.len(),
            max: MAX_SECTIONS,
        });
    }

    let mut out = stub.to_vec();
    let fa = h.file_alignment;
    let sa = h.section_alignment;
    let (coff, opt, table) = (h.coff, h.opt, h.table);
    let data_end = h
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.file_range().end)
        .max()
        .unwrap_or(0);

    // 1. A COFF symbol table that ends the file goes (ukify `pe_add_sections` does the same):
    // images should not carry one, and it would sit between the stub's data and ours.
    let mut symbols_at = h.pointer_to_symbol_table;
    if symbols_at != 0 {
        let start = u64::from(symbols_at);
        let mut end = start + COFF_SYMBOL_SIZE * u64::from(h.number_of_symbols);
        if let Some(size) = out.get(end as usize..end as usize + 4) {
            end += u64::from(u32::from_le_bytes(size.try_into().expect("4 bytes")));
        }
        if end == out.len() as u64 && start >= data_end && start >= u64::from(h.size_of_headers) {
            out.truncate(start as usize);
            wr32(&mut out, coff + COFF_POINTER_TO_SYMBOL_TABLE, 0);
            wr32(&mut out, coff + COFF_NUMBER_OF_SYMBOLS, 0);
            let c = rd16(&out, coff + COFF_CHARACTERISTICS);
            wr16(
                &mut out,
                coff + COFF_CHARACTERISTICS,
                c | IMAGE_FILE_LOCAL_SYMS_STRIPPED,
            );
            symbols_at = 0;
        }
    }

    // 2. Room for the new section headers. Headers are mapped at RVA 0 up to SizeOfHeaders
    // and stored before the first section's data.
    let old_table_end = (table + n_old * SECTION_HEADER_SIZE) as u64;
    let table_end = (table + n_total * SECTION_HEADER_SIZE) as u64;
    let first_raw = h
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| u64::from(s.raw_offset))
        .min()
        .unwrap_or(out.len() as u64);
    let first_va = h
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address))
        .min()
        .unwrap_or(u64::MAX);
    // ukify: "padding the SizeOfHeaders to a multiple of the file alignment … is safe because
    // the first section's data starts at a multiple of the file alignment".
    let mut size_of_headers = align_up(u64::from(h.size_of_headers), fa).min(first_raw);
    if table_end > size_of_headers {
        let grown = align_up(table_end, fa);
        if grown > first_va {
            return Err(UkiError::NoHeaderRoom {
                adding: new.len(),
                table_end,
                limit: first_va,
                why: "the first section's VirtualAddress: headers cannot grow past it",
            });
        }
        if h.debug_size != 0 {
            return Err(UkiError::NoHeaderRoom {
                adding: new.len(),
                table_end,
                limit: size_of_headers,
                why: "growing them would move the data a debug directory points to",
            });
        }
        // Move every byte from the first section's data on down by whole FileAlignment units.
        let shift = align_up(grown.saturating_sub(first_raw), fa);
        if shift > 0 {
            let at = first_raw as usize;
            out.splice(at..at, std::iter::repeat_n(0u8, shift as usize));
            for i in 0..n_old {
                let sh = table + i * SECTION_HEADER_SIZE;
                for field in [
                    SH_POINTER_TO_RAW_DATA,
                    SH_POINTER_TO_RELOCATIONS,
                    SH_POINTER_TO_LINENUMBERS,
                ] {
                    let v = rd32(&out, sh + field);
                    if v != 0 && u64::from(v) >= first_raw {
                        let moved = to_u32(u64::from(v) + shift, "stub file offset")?;
                        wr32(&mut out, sh + field, moved);
                    }
                }
            }
            if symbols_at != 0 && u64::from(symbols_at) >= first_raw {
                let moved = to_u32(u64::from(symbols_at) + shift, "symbol table")?;
                wr32(&mut out, coff + COFF_POINTER_TO_SYMBOL_TABLE, moved);
            }
        }
        size_of_headers = grown;
    }
    let slot = &out[old_table_end as usize..table_end as usize];
    if let Some(p) = slot.iter().position(|&b| b != 0) {
        return Err(UkiError::HeaderSpaceInUse {
            offset: old_table_end,
            len: table_end - old_table_end,
            found: slot[p..].iter().take(8).copied().collect(),
        });
    }
    wr32(
        &mut out,
        opt + OPT_SIZE_OF_HEADERS,
        to_u32(size_of_headers, "SizeOfHeaders")?,
    );

    // 3. The new sections: memory after everything the stub occupies, data after the file.
    let stub_end = h
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.raw_size)))
        .chain([u64::from(h.size_of_image)])
        .max()
        .unwrap_or(0);
    let mut va = align_up(stub_end, sa);
    let mut size_of_code = u64::from(rd32(&out, opt + OPT_SIZE_OF_CODE));
    let mut size_of_data = u64::from(rd32(&out, opt + OPT_SIZE_OF_INITIALIZED_DATA));
    for (i, s) in new.iter().enumerate() {
        let len = s.data.len() as u64;
        let raw_offset = align_up(out.len() as u64, fa);
        let raw_size = align_up(len, fa);
        out.resize(raw_offset as usize, 0);
        out.extend_from_slice(s.data);
        out.resize((raw_offset + raw_size) as usize, 0);

        let sh = table + (n_old + i) * SECTION_HEADER_SIZE;
        let mut name = [0u8; 8];
        name[..s.name.len()].copy_from_slice(s.name.as_bytes());
        out[sh..sh + 8].copy_from_slice(&name);
        wr32(&mut out, sh + SH_VIRTUAL_SIZE, to_u32(len, s.name)?);
        wr32(&mut out, sh + SH_VIRTUAL_ADDRESS, to_u32(va, s.name)?);
        wr32(
            &mut out,
            sh + SH_SIZE_OF_RAW_DATA,
            to_u32(raw_size, s.name)?,
        );
        wr32(
            &mut out,
            sh + SH_POINTER_TO_RAW_DATA,
            to_u32(raw_offset, s.name)?,
        );
        wr32(&mut out, sh + SH_CHARACTERISTICS, s.characteristics);

        if s.characteristics & IMAGE_SCN_CNT_CODE != 0 {
            size_of_code += raw_size;
        } else if s.characteristics & IMAGE_SCN_CNT_INITIALIZED_DATA != 0 {
            size_of_data += raw_size;
        }
        va = align_up(va + len, sa);
    }
    to_u32(out.len() as u64, "the UKI")?;
    wr16(
        &mut out,
        coff + COFF_NUMBER_OF_SECTIONS,
        n_total as u16, // ≤ MAX_SECTIONS
    );
    wr32(
        &mut out,
        opt + OPT_SIZE_OF_IMAGE,
        to_u32(va, "SizeOfImage")?,
    );
    wr32(
        &mut out,
        opt + OPT_SIZE_OF_CODE,
        to_u32(size_of_code, "SizeOfCode")?,
    );
    wr32(
        &mut out,
        opt + OPT_SIZE_OF_INITIALIZED_DATA,
        to_u32(size_of_data, "SizeOfInitializedData")?,
    );
    let sum = pe::checksum_skipping(&out, opt + OPT_CHECKSUM);
    wr32(&mut out, opt + OPT_CHECKSUM, sum);
    Ok(out)
}

/// Builds a UKI from systemd-stub (`stub`, the bytes of e.g. [`DEFAULT_STUB`]) and the section
/// contents. Sections come in ukify's order (`make_uki`: `.osrel`, `.cmdline`, `.dtb`,
/// `.uname`, `.splash`, `.pcrpkey`, `.initrd`, `.ucode`, then `.linux`, and `.pcrsig` last,
/// once the rest is measured), of which a UKI here has `.osrel`, `.cmdline`, `.uname`,
/// `.pcrpkey`, `.initrd`, `.linux`, `.pcrsig`; empty ones are left out. The PE
/// order does not change PCR 11: the stub measures in its own fixed order
/// ([`STUB_252_MEASURED_SECTIONS`]). Same inputs, same bytes.
pub fn build_uki(stub: &[u8], sections: &UkiSections) -> Result<Vec<u8>, UkiError> {
    if sections.linux.is_empty() {
        return Err(UkiError::EmptySection {
            name: ".linux".to_owned(),
        });
    }
    let data = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ;
    let code = IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_READ;
    let all = [
        (".osrel", sections.osrel, data),
        (".cmdline", sections.cmdline.as_bytes(), data),
        (".uname", sections.uname.as_bytes(), data),
        (".pcrpkey", sections.pcrpkey, data),
        (".initrd", sections.initrd, data),
        (".linux", sections.linux, code),
        (".pcrsig", sections.pcrsig, data),
    ];
    let new: Vec<NewSection> = all
        .iter()
        .filter(|(_, d, _)| !d.is_empty())
        .map(|&(name, data, characteristics)| NewSection {
            name,
            data,
            characteristics,
        })
        .collect();
    add_sections(stub, &new)
}

/// Reads the stub at `stub`, builds the UKI and writes it to `out` (through a temporary file
/// in the same directory, renamed into place: `out` is never partial).
pub fn write_uki(stub: &Path, sections: &UkiSections, out: &Path) -> Result<(), UkiError> {
    let io = |path: &Path, action| {
        let path = path.to_path_buf();
        move |source| UkiError::Io {
            path,
            action,
            source,
        }
    };
    let stub_bytes = std::fs::read(stub).map_err(io(stub, "read the stub"))?;
    let uki = build_uki(&stub_bytes, sections)?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir, "create a file in"))?;
    std::io::Write::write_all(&mut tmp, &uki).map_err(io(tmp.path(), "write"))?;
    tmp.as_file().sync_all().map_err(io(tmp.path(), "sync"))?;
    tmp.persist(out).map_err(|e| UkiError::Io {
        path: out.to_path_buf(),
        action: "rename into place",
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_firmware::pcr;
    use sha2::{Digest, Sha256};

    /// TPM extend: `sha256(pcr || sha256(data))`.
    fn extend(value: [u8; 32], data: &[u8]) -> [u8; 32] {
        pcr::extend(value, &pcr::digest(data))
    }

    /// A minimal PE image: `n` sections named `.s0`, `.s1`, … of 0x10 bytes each (filled with
    /// their index), laid out like a linker would.
    struct Synth {
        magic: u16,
        n: usize,
        size_of_headers: u32,
        first_va: u32,
        alignment: u32,
    }

    impl Default for Synth {
        fn default() -> Self {
            Synth {
                magic: OPT_MAGIC_PE32_PLUS,
                n: 3,
                size_of_headers: 0x400,
                first_va: 0x1000,
                alignment: 0x200,
            }
        }
    }

    impl Synth {
        fn build(&self) -> Vec<u8> {
            let soh = self.size_of_headers as usize;
            let a = self.alignment as usize;
            let mut pe = vec![0u8; soh + self.n * a];
            pe[..2].copy_from_slice(b"MZ");
            wr32(&mut pe, DOS_E_LFANEW, DOS_HEADER_SIZE as u32);
            pe[0x40..0x44].copy_from_slice(&PE_SIGNATURE);
            let coff = 0x44;
            wr16(&mut pe, coff, 0x8664);
            wr16(&mut pe, coff + COFF_NUMBER_OF_SECTIONS, self.n as u16);
            wr16(&mut pe, coff + COFF_SIZE_OF_OPTIONAL_HEADER, 240);
            wr16(&mut pe, coff + COFF_CHARACTERISTICS, 0x206);
            let opt = coff + COFF_HEADER_SIZE;
            wr16(&mut pe, opt, self.magic);
            wr32(&mut pe, opt + OPT_SECTION_ALIGNMENT, self.alignment);
            wr32(&mut pe, opt + OPT_FILE_ALIGNMENT, self.alignment);
            let end = self.first_va as usize + self.n * a;
            wr32(&mut pe, opt + OPT_SIZE_OF_IMAGE, end as u32);
            wr32(&mut pe, opt + OPT_SIZE_OF_HEADERS, self.size_of_headers);
            wr32(&mut pe, opt + OPT_NUMBER_OF_RVA_AND_SIZES, 16);
            wr32(
                &mut pe,
                opt + OPT_SIZE_OF_INITIALIZED_DATA,
                (self.n * a) as u32,
            );
            let table = opt + 240;
            for i in 0..self.n {
                let sh = table + i * SECTION_HEADER_SIZE;
                let name = format!(".s{i}");
                pe[sh..sh + name.len()].copy_from_slice(name.as_bytes());
                wr32(&mut pe, sh + SH_VIRTUAL_SIZE, 0x10);
                wr32(
                    &mut pe,
                    sh + SH_VIRTUAL_ADDRESS,
                    self.first_va + (i * a) as u32,
                );
                wr32(&mut pe, sh + SH_SIZE_OF_RAW_DATA, a as u32);
                wr32(&mut pe, sh + SH_POINTER_TO_RAW_DATA, (soh + i * a) as u32);
                wr32(
                    &mut pe,
                    sh + SH_CHARACTERISTICS,
                    IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
                );
                pe[soh + i * a..soh + i * a + 0x10].fill(i as u8 + 1);
            }
            pe
        }
    }

    fn sections<'a>() -> UkiSections<'a> {
        UkiSections {
            osrel: b"ID=debian\n",
            cmdline: "console=ttyS0",
            uname: "6.1.0-test",
            linux: b"MZ fake kernel, long enough to span more than one alignment unit? no",
            initrd: &[7u8; 1000],
            pcrpkey: &[],
            pcrsig: &[],
        }
    }

    fn table_capacity(s: &Synth) -> usize {
        (s.size_of_headers as usize - (0x44 + COFF_HEADER_SIZE + 240)) / SECTION_HEADER_SIZE
    }

    #[test]
    fn reads_synthetic_sections() {
        let pe = Synth::default().build();
        let s = read_sections(&pe).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].name, ".s1");
        assert_eq!(s[1].virtual_address, 0x1200);
        assert_eq!(s[1].raw_offset, 0x600);
        assert_eq!(&*s[1].data(&pe).unwrap(), &[2u8; 0x10]);
        // Past SizeOfRawData a section reads as zeros, as a loader maps it (.bss style).
        let bss = PeSection {
            virtual_size: 0x300,
            ..s[1].clone()
        };
        let data = bss.data(&pe).unwrap();
        assert_eq!((&data[..0x10], data.len()), (&[2u8; 0x10][..], 0x300));
        assert!(data[0x200..].iter().all(|&b| b == 0));
        let empty = PeSection {
            raw_size: 0,
            raw_offset: 0xffff_0000,
            ..bss
        };
        assert_eq!(&*empty.data(&pe).unwrap(), &[0u8; 0x300][..]);
    }

    #[test]
    fn not_mz() {
        let err = read_sections(b"\x7fELF\x02\x01\x01\0").unwrap_err();
        assert!(
            matches!(&err, UkiError::Pe(PeError::NotMz { found }) if found == b"\x7fE"),
            "{err}"
        );
        assert!(err.to_string().contains("expected \"MZ\""), "{err}");
        assert!(matches!(
            read_sections(b""),
            Err(UkiError::Pe(PeError::NotMz { .. }))
        ));
    }

    #[test]
    fn truncated_headers() {
        let pe = Synth::default().build();
        for (cut, what) in [
            (0x20, "DOS header"),
            (0x50, "PE signature and COFF header"),
            (0x100, "optional header"),
            (0x180, "section table"),
        ] {
            match read_sections(&pe[..cut]) {
                Err(UkiError::Pe(PeError::Truncated { what: w, len, .. })) => {
                    assert_eq!((w, len), (what, cut as u64))
                }
                other => panic!("cut at {cut:#x}: {other:?}"),
            }
        }
        // A section whose data runs past the end of the file.
        let err = read_sections(&pe[..0x900]).unwrap_err();
        assert!(
            matches!(&err, UkiError::Pe(PeError::SectionOutOfFile { name, .. }) if name == ".s2"),
            "{err}"
        );
    }

    #[test]
    fn no_pe_signature() {
        let mut pe = Synth::default().build();
        pe[0x40..0x44].copy_from_slice(b"NE\0\0");
        let err = read_sections(&pe).unwrap_err();
        assert!(
            matches!(err, UkiError::Pe(PeError::NoPeSignature { offset: 0x40, found }) if &found == b"NE\0\0")
        );
    }

    #[test]
    fn pe32_is_refused() {
        let pe = Synth {
            magic: OPT_MAGIC_PE32,
            ..Synth::default()
        }
        .build();
        let err = build_uki(&pe, &sections()).unwrap_err();
        assert!(
            matches!(
                err,
                UkiError::NotPe32Plus {
                    expected: 0x20b,
                    found: 0x10b
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("PE32, a 32-bit image"), "{err}");
    }

    #[test]
    fn bad_alignment() {
        let mut pe = Synth::default().build();
        wr32(&mut pe, 0x58 + OPT_FILE_ALIGNMENT, 0x300);
        let err = read_sections(&pe).unwrap_err();
        assert!(
            matches!(
                err,
                UkiError::BadAlignment {
                    what: "FileAlignment",
                    found: 0x300
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn lays_out_new_sections() {
        let stub = Synth::default().build();
        let uki = build_uki(&stub, &sections()).unwrap();
        let s = read_sections(&uki).unwrap();
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [".s0", ".s1", ".s2", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
        );
        // The stub's sections are untouched, headers and bytes.
        let old = read_sections(&stub).unwrap();
        assert_eq!(&s[..3], &old[..]);
        assert_eq!(&uki[0x400..0xa00], &stub[0x400..0xa00]);
        // Memory right after the stub's SizeOfImage (0x1600), file right after its data.
        assert_eq!(s[3].virtual_address, 0x1600);
        assert_eq!(s[3].raw_offset, 0xa00);
        let want = sections();
        let contents: [&[u8]; 5] = [
            want.osrel,
            want.cmdline.as_bytes(),
            want.uname.as_bytes(),
            want.initrd,
            want.linux,
        ];
        for (sec, data) in s[3..].iter().zip(contents) {
            assert_eq!(sec.virtual_size as usize, data.len(), "{}", sec.name);
            assert_eq!(sec.raw_size % 0x200, 0);
            assert_eq!(sec.raw_offset % 0x200, 0);
            assert_eq!(sec.virtual_address % 0x200, 0);
            assert_eq!(&*sec.data(&uki).unwrap(), data);
        }
        for w in s.windows(2) {
            assert!(w[0].memory_range().end <= u64::from(w[1].virtual_address));
            assert!(w[0].file_range().end <= u64::from(w[1].raw_offset));
        }
        assert_eq!(
            s[7].characteristics,
            IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_READ
        );
        assert_eq!(
            s[6].characteristics,
            IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
        );
        let opt = 0x58;
        assert_eq!(rd16(&uki, 0x44 + COFF_NUMBER_OF_SECTIONS), 8);
        let last = s[7].memory_range().end;
        assert_eq!(
            u64::from(rd32(&uki, opt + OPT_SIZE_OF_IMAGE)),
            align_up(last, 0x200)
        );
        assert_eq!(rd32(&uki, opt + OPT_SIZE_OF_CODE), 0x200); // .linux
        let data: u32 = 3 * 0x200 + s[3..7].iter().map(|s| s.raw_size).sum::<u32>();
        assert_eq!(rd32(&uki, opt + OPT_SIZE_OF_INITIALIZED_DATA), data);
        assert_eq!(rd32(&uki, opt + OPT_CHECKSUM), pe_checksum(&uki).unwrap());
        assert_eq!(build_uki(&stub, &sections()).unwrap(), uki);
    }

    #[test]
    fn empty_sections_are_left_out_but_linux_is_required() {
        let stub = Synth::default().build();
        let mut sec = sections();
        sec.uname = "";
        sec.initrd = b"";
        let uki = build_uki(&stub, &sec).unwrap();
        let names: Vec<String> = read_sections(&uki)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names[3..], [".osrel", ".cmdline", ".linux"]);
        sec.linux = b"";
        let err = build_uki(&stub, &sec).unwrap_err();
        assert!(
            matches!(&err, UkiError::EmptySection { name } if name == ".linux"),
            "{err}"
        );
    }

    #[test]
    fn grows_headers_when_the_table_is_full() {
        let synth = Synth {
            n: 4,
            size_of_headers: 0x200,
            ..Synth::default()
        };
        assert_eq!(table_capacity(&synth), 4);
        let stub = synth.build();
        let uki = build_uki(&stub, &sections()).unwrap();
        let s = read_sections(&uki).unwrap();
        assert_eq!(s.len(), 9);
        assert_eq!(rd32(&uki, 0x58 + OPT_SIZE_OF_HEADERS), 0x400);
        let old = read_sections(&stub).unwrap();
        for (new, old) in s.iter().zip(&old) {
            assert_eq!(new.raw_offset, old.raw_offset + 0x200);
            assert_eq!(
                (new.virtual_address, new.virtual_size, new.raw_size),
                (old.virtual_address, old.virtual_size, old.raw_size)
            );
            assert_eq!(new.data(&uki).unwrap(), old.data(&stub).unwrap());
        }
        assert_eq!(s[8].data(&uki).unwrap(), sections().linux);
    }

    #[test]
    fn no_header_room() {
        // The first section is mapped right after the headers: they cannot grow.
        let synth = Synth {
            n: 3,
            size_of_headers: 0x200,
            first_va: 0x200,
            ..Synth::default()
        };
        assert_eq!(table_capacity(&synth), 4);
        let err = build_uki(&synth.build(), &sections()).unwrap_err();
        match &err {
            UkiError::NoHeaderRoom {
                adding,
                table_end,
                limit,
                ..
            } => assert_eq!((*adding, *table_end, *limit), (5, 0x288, 0x200)),
            other => panic!("{other:?}"),
        }
        assert!(err
            .to_string()
            .contains("no room for 5 more section headers"));
        // Exactly one free slot and one section to add: fits without growing.
        let one = [NewSection {
            name: ".osrel",
            data: b"ID=x\n",
            characteristics: IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
        }];
        let uki = add_sections(&synth.build(), &one).unwrap();
        assert_eq!(rd32(&uki, 0x58 + OPT_SIZE_OF_HEADERS), 0x200);
    }

    #[test]
    fn header_space_in_use() {
        let mut stub = Synth::default().build();
        let table_end = 0x44 + COFF_HEADER_SIZE + 240 + 3 * SECTION_HEADER_SIZE;
        stub[table_end + 45] = 0xaa;
        let err = build_uki(&stub, &sections()).unwrap_err();
        assert!(
            matches!(err, UkiError::HeaderSpaceInUse { offset, .. } if offset == table_end as u64),
            "{err}"
        );
    }

    #[test]
    fn too_many_sections() {
        let synth = Synth {
            n: 93,
            size_of_headers: 0x1000,
            first_va: 0x1000,
            ..Synth::default()
        };
        let err = build_uki(&synth.build(), &sections()).unwrap_err();
        assert!(
            matches!(
                err,
                UkiError::TooManySections {
                    existing: 93,
                    adding: 5,
                    max: 96
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("makes 98"), "{err}");
    }

    #[test]
    fn bad_names_and_duplicates() {
        let stub = Synth::default().build();
        let sec = |name| NewSection {
            name,
            data: b"x",
            characteristics: IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
        };
        for name in [".toolong9", "", ".a b", ".é"] {
            let err = add_sections(&stub, &[sec(name)]).unwrap_err();
            assert!(
                matches!(&err, UkiError::BadSectionName { name: n, len } if n == name && *len == name.len()),
                "{name:?}: {err}"
            );
        }
        assert!(add_sections(&stub, &[sec(".8bytes_")]).is_ok());
        let err = add_sections(&stub, &[sec(".a"), sec(".a")]).unwrap_err();
        assert!(matches!(err, UkiError::DuplicateSection { .. }), "{err}");
        let err = add_sections(&stub, &[sec(".s1")]).unwrap_err();
        assert!(
            matches!(&err, UkiError::StubHasSection { name } if name == ".s1"),
            "{err}"
        );
        // A UKI is no stub.
        let uki = build_uki(&stub, &sections()).unwrap();
        let err = build_uki(&uki, &sections()).unwrap_err();
        assert!(matches!(err, UkiError::StubHasSection { .. }), "{err}");
    }

    #[test]
    fn signed_stub_is_refused() {
        let mut stub = Synth::default().build();
        let at = 0x58 + OPT_DATA_DIRECTORIES + DIR_SECURITY * DATA_DIRECTORY_SIZE;
        wr32(&mut stub, at, 0xa00);
        wr32(&mut stub, at + 4, 0x100);
        let err = build_uki(&stub, &sections()).unwrap_err();
        assert!(
            matches!(
                err,
                UkiError::SignedStub {
                    offset: 0xa00,
                    size: 0x100
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn strips_a_trailing_symbol_table_only() {
        let mut stub = Synth::default().build();
        let at = stub.len() as u32;
        wr32(&mut stub, 0x44 + COFF_POINTER_TO_SYMBOL_TABLE, at);
        wr32(&mut stub, 0x44 + COFF_NUMBER_OF_SYMBOLS, 2);
        stub.extend_from_slice(&[0x55; 36]);
        stub.extend_from_slice(&8u32.to_le_bytes());
        stub.extend_from_slice(b"abcd");
        let uki = build_uki(&stub, &sections()).unwrap();
        assert_eq!(rd32(&uki, 0x44 + COFF_POINTER_TO_SYMBOL_TABLE), 0);
        assert_eq!(rd32(&uki, 0x44 + COFF_NUMBER_OF_SYMBOLS), 0);
        assert_eq!(rd16(&uki, 0x44 + COFF_CHARACTERISTICS), 0x206 | 0x8);
        assert_eq!(read_sections(&uki).unwrap()[3].raw_offset, at);

        // Something after the symbol table: it all stays, new data goes after it.
        stub.push(1);
        let uki = build_uki(&stub, &sections()).unwrap();
        assert_eq!(rd32(&uki, 0x44 + COFF_POINTER_TO_SYMBOL_TABLE), at);
        assert_eq!(&uki[at as usize..stub.len()], &stub[at as usize..]);
        assert_eq!(read_sections(&uki).unwrap()[3].raw_offset, at + 0x200);
    }

    #[test]
    fn pcr11_follows_the_stub_order() {
        let stub = Synth::default().build();
        let sec = sections();
        let uki = build_uki(&stub, &sec).unwrap();
        // By hand: .linux, .osrel, .cmdline, .initrd; .uname is not measured by 252.
        let mut pcr = [0u8; 32];
        for (name, data) in [
            (&b".linux\0"[..], sec.linux),
            (&b".osrel\0"[..], sec.osrel),
            (&b".cmdline\0"[..], sec.cmdline.as_bytes()),
            (&b".initrd\0"[..], sec.initrd),
        ] {
            pcr = extend(pcr, name);
            pcr = extend(pcr, data);
        }
        assert_eq!(predict_pcr11(&uki).unwrap(), pcr);
        // Phases are extended as bare words.
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(Sha256::digest(b"enter-initrd"));
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(pcr11_after_phases(pcr, &["enter-initrd"]), want);
        assert_eq!(pcr11_after_phases(pcr, &[]), pcr);
    }

    #[test]
    fn pcr11_name_matching_is_a_prefix_compare() {
        // 252's locate_sections compares only strlen(name) bytes: ".linuxXY" counts as .linux.
        let stub = Synth::default().build();
        let sec = |name, data| NewSection {
            name,
            data,
            characteristics: IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
        };
        let uki = add_sections(&stub, &[sec(".linuxXY", b"kernel")]).unwrap();
        let mut pcr = extend([0; 32], b".linux\0");
        pcr = extend(pcr, b"kernel");
        assert_eq!(predict_pcr11(&uki).unwrap(), pcr);
        // A stub alone measures nothing.
        assert_eq!(predict_pcr11(&stub).unwrap(), [0; 32]);
    }

    #[test]
    fn checksum_counts_odd_tails_and_skips_its_field() {
        let mut pe = Synth::default().build();
        let a = pe_checksum(&pe).unwrap();
        wr32(&mut pe, 0x58 + OPT_CHECKSUM, 0xdead_beef);
        assert_eq!(pe_checksum(&pe).unwrap(), a);
        pe.push(0x01);
        assert_eq!(pe_checksum(&pe).unwrap(), a + 1 + 1);
    }
}

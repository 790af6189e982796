//! The image build pipeline, one module per stage, data flowing one way:
//! rootfs → filesystems (ext4, verity, ESP) → UKI → disk → artifacts. `build` calls the
//! stages in order, through the `stage_cache` where their inputs are unchanged; `release`
//! assembles the release directory.

pub mod agent;
pub mod artifacts;
pub use plinth_release::blocks;
pub mod boot_entries;
pub mod build;
pub mod carried;
pub mod cpio;
pub mod disk;
pub mod esp;
pub mod ext4;
pub mod frames;
pub mod identity;
pub mod ids;
pub mod initrd;
pub mod job;
pub use plinth_release::manifest;
pub mod measure;
pub mod normalize;
pub mod overlay;
pub mod ovmf;
pub mod pcr_signing;
pub mod release;
pub mod rootfs;
pub mod sbom;
pub mod snp;
pub mod stage_cache;
pub mod state;
pub mod tool;
pub mod uki;
pub mod users;
pub mod verity;

//! Installing HostOS and GuestOS onto a certified machine (`plinth-setup install`): the
//! disks chosen ([`disks`]), the GuestOS VM planned ([`guest`]), the releases written and
//! read back, HostOS's configuration partition filled ([`hostconfig`]), the boot entry set.
//! Nothing is written to any disk before certification and every check of the inputs
//! passed.

pub mod disks;
pub mod guest;
pub mod hostconfig;
pub mod media;
pub mod run;

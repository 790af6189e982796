//! Sizes in os.yaml: `512MiB`, `4GiB` (binary units only), stored in bytes.
// PLACEHOLDER (helper A replaces this file)
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Size(pub u64);

impl TryFrom<String> for Size {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Err(s)
    }
}
impl From<Size> for String {
    fn from(s: Size) -> String {
        format!("{}", s.0)
    }
}

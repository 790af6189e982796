//! More power-loss trials of HostOS's sealed state than the release tier's five, on a release
//! built beforehand (`ci/power-loss` builds one and runs this): the trials themselves are the
//! release tier's (`reproducible::power_loss_trials`).

use crate::reproducible::{power_loss_trials, trial_seed};
use std::path::PathBuf;

/// More power-loss trials than the release tier runs (`ci/power-loss`): on the HostOS release
/// in `PLINTH_POWER_RELEASE`, `PLINTH_POWER_TRIALS` of them (default 50).
#[test]
#[ignore = "ci/power-loss: root, a built HostOS test release"]
fn power_loss_trials_on_a_release() {
    let release = PathBuf::from(
        std::env::var("PLINTH_POWER_RELEASE")
            .expect("PLINTH_POWER_RELEASE: a HostOS release directory (ci/power-loss sets it)"),
    );
    let trials = std::env::var("PLINTH_POWER_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(50);
    let scratch = tempfile::tempdir().unwrap();
    power_loss_trials(
        &release,
        &scratch.path().join("power"),
        trials,
        trial_seed(),
    );
}

//! Firmware and trust: the catalog of certified hardware generations, the recipe for the AMD
//! SEV guest firmware, measurement prediction (SNP launch digest, TPM PCRs) and attestation
//! verification. Filled in by the firmware and measured-boot issues; nothing here yet.

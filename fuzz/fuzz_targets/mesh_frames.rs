//! `grouter::fuzzing::mesh_frames` under libFuzzer (`deploy/fuzz.sh`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| grouter::fuzzing::mesh_frames(data));

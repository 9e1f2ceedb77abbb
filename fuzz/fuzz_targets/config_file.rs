//! `grouter::fuzzing::config_file` under libFuzzer (`deploy/fuzz.sh`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| grouter::fuzzing::config_file(data));

//! `grouter::fuzzing::http1_head` under libFuzzer (`deploy/fuzz.sh`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| grouter::fuzzing::http1_head(data));

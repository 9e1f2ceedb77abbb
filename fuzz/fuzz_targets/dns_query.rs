//! `grouter::fuzzing::dns_query` under libFuzzer (`deploy/fuzz.sh`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| grouter::fuzzing::dns_query(data));

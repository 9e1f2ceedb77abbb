//! `grouter::fuzzing::nats_message` under libFuzzer (`deploy/fuzz.sh`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| grouter::fuzzing::nats_message(data));

//! The stream framer on arbitrary bytes cut at arbitrary points.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_sip::fuzzing::exercise_framer;

fuzz_target!(|data: &[u8]| {
    exercise_framer(data);
});

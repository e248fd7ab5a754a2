use super::*;

#[test]
fn vendored_schemas_compile_offline() {
    assert!(VALIDATOR_30.is_ok(), "{:?}", VALIDATOR_30.as_ref().err());
    assert!(VALIDATOR_31.is_ok(), "{:?}", VALIDATOR_31.as_ref().err());
}

//! Test fixture: exports `os-credits:pricing/policy@2.0.0`.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "wit", world: "pricing" });

struct Future;

impl exports::os_credits::pricing::policy::Guest for Future {
    fn describe() -> String {
        "from the future".into()
    }
}

export!(Future);

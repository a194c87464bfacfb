//! Test fixture: exports `os-credits:pricing/policy@1.0.0`.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({ path: "wit", world: "pricing" });

struct Old;

impl exports::os_credits::pricing::policy::Guest for Old {
    fn describe() -> String {
        "built for the 1.0 contract".into()
    }
}

export!(Old);

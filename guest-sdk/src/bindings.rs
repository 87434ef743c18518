//! The generated bindings of the `weir:proxy/plugin` world. Plugin code uses the
//! types of this crate instead; these are public for the export macro.
#![allow(unsafe_code, missing_docs, missing_debug_implementations)]

wit_bindgen::generate!({
    path: "../wit",
    world: "weir:proxy/plugin",
    pub_export_macro: true,
    export_macro_name: "__export_weir_plugin",
    default_bindings_module: "weir_sdk::bindings",
});

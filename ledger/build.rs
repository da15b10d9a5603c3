//! Compiles `proto/ledger.proto` with tonic-prost-build when the `net` feature is on. `protoc`
//! comes from the `protoc-bin-vendored` crate, so the build needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ledger.proto");
    #[cfg(feature = "net")]
    {
        let mut config = prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        config.bytes(["."]);
        tonic_prost_build::configure().compile_with_config(
            config,
            &["proto/ledger.proto"],
            &["proto"],
        )?;
    }
    Ok(())
}

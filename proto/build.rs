//! Generates the agent API's Rust code from agent.proto into OUT_DIR, with the vendored
//! protoc (there is no system protoc on the build machines). Only with the `grpc` feature:
//! the VMM's contract (`vmm`) needs no code generation.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    generate_agent_api()?;
    Ok(())
}

#[cfg(feature = "grpc")]
fn generate_agent_api() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Read by prost-build; set before any code generation runs, single-threaded.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=agent.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["agent.proto"], &["."])?;
    Ok(())
}

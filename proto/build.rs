//! Generates the agent API's Rust code from agent.proto into OUT_DIR, with the vendored
//! protoc (there is no system protoc on the build machines): the server with `agent-server`
//! (the guest), the client with `agent-client` (the host). The VMM's contract (`vmm`)
//! needs no code generation.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(any(feature = "agent-server", feature = "agent-client"))]
    generate_agent_api()?;
    Ok(())
}

#[cfg(any(feature = "agent-server", feature = "agent-client"))]
fn generate_agent_api() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Read by prost-build; set before any code generation runs, single-threaded.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=agent.proto");
    tonic_prost_build::configure()
        .build_client(cfg!(feature = "agent-client"))
        .build_server(cfg!(feature = "agent-server"))
        .compile_protos(&["agent.proto"], &["."])?;
    Ok(())
}

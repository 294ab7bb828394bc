//! Compiles the protobuf files with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox does not emit rerun-if-changed lines itself.
    println!("cargo:rerun-if-changed=proto");

    let files = [
        "colex/v1/silo.proto",
        "colex/v1/controller.proto",
        "colex/v1/agent.proto",
        "colex/v1/raft.proto",
        "colex/v1/members.proto",
        "colex/v1/blobs.proto",
        "colex/v1/security.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

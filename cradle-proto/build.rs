//! Generates the messages and the client and server stubs from
//! `proto/cradle_gateway.proto` with protox (a protobuf compiler in Rust),
//! so no `protoc` binary is needed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cradle_gateway.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Blob chunks as `Bytes`: decoded without a copy, and a sender can
        // hand over memory it does not own as a Vec.
        .bytes(".cradle.gateway.v1.UploadChunk.data")
        .bytes(".cradle.gateway.v1.DownloadChunk.data")
        .compile_fds(fds)?;
    Ok(())
}

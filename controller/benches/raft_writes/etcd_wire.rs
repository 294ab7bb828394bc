//! The few etcd v3 gRPC messages the benchmark uses, declared by hand with their field numbers
//! from etcd's `api/etcdserverpb/rpc.proto`, and a client for `KV.Put` and
//! `Maintenance.Status`.
//!
//! The `etcd-client` crate would generate these with a system `protoc` at build time, which
//! this workspace does not need anywhere else, so two calls are declared here instead. prost
//! skips the fields a response carries that these structs leave out.

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

const PUT_PATH: &str = "/etcdserverpb.KV/Put";
const STATUS_PATH: &str = "/etcdserverpb.Maintenance/Status";

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    /// Id of the member that sent the response.
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub version: String,
    /// Member id of the leader that this member follows, or 0 while it has none.
    #[prost(uint64, tag = "4")]
    pub leader: u64,
    /// Index of the member's last committed Raft entry.
    #[prost(uint64, tag = "5")]
    pub raft_index: u64,
    #[prost(uint64, tag = "6")]
    pub raft_term: u64,
}

/// A client of one etcd member.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdClient {
    pub fn new(channel: Channel) -> EtcdClient {
        EtcdClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// Stores `value` under `key`.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<PutResponse, tonic::Status> {
        self.unary(PutRequest { key, value }, PUT_PATH).await
    }

    /// Returns the member's status: its id, its leader and its Raft index.
    pub async fn status(&mut self) -> Result<StatusResponse, tonic::Status> {
        self.unary(StatusRequest {}, STATUS_PATH).await
    }

    async fn unary<Request, Response>(&mut self, request: Request, path: &'static str) -> Result<Response, tonic::Status>
    where
        Request: prost::Message + Send + Sync + 'static,
        Response: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|error| tonic::Status::unavailable(format!("etcd connection not ready: {error}")))?;
        let codec = ProstCodec::<Request, Response>::default();
        let response = self
            .grpc
            .unary(tonic::Request::new(request), PathAndQuery::from_static(path), codec)
            .await?;
        Ok(response.into_inner())
    }
}

//! The registry layout in etcd: where instances live and the value formats cairn reads and writes.
//!
//! An instance lives at `<prefix><service>/<instance-id>` ([`key`]). Its value is detected per
//! key as one of three [`Format`]s ([`value`]), so services registered by the seed registry, by
//! etcd's own Go naming package or by go-zero are all routable unchanged.

pub mod key;
pub mod value;

pub use key::{
    instance_key, prefix_end, service_prefix, split_key, InstanceId, Prefix, ServiceName,
};
pub use value::{parse_value, Endpoint, Format, ValueError};

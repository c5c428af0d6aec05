//! Values written as one string, parsed the same way wherever they come from: the config
//! file, the command line, etcd.

/// Implements `Deserialize` through `FromStr`, so the config file and clap share one parser and
/// one error message per value type.
macro_rules! deserialize_from_str {
    ($($ty:ty),+ $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}
pub(crate) use deserialize_from_str;

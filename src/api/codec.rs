//! The protobuf codec of every generated service and client (`codec_path` in build.rs): prost's,
//! except that a request that is not valid protobuf for its method is the caller's mistake,
//! answered INVALID_ARGUMENT with reason MALFORMED_REQUEST through `status` like every other bad
//! input (prost's codec calls it INTERNAL, which tells a client to retry or page someone).

use crate::error::{Error, Reason};
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

#[derive(Debug, Clone)]
pub struct Codec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CallerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CallerDecoder(ProstDecoder::default())
    }
}

/// prost's decoder with its failures mapped to MALFORMED_REQUEST.
#[derive(Debug, Clone)]
pub struct CallerDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for CallerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|e| {
            super::status::to_status(Error::invalid(
                Reason::MalformedRequest,
                "",
                format!(
                    "the request is not a valid protobuf message: {}",
                    e.message()
                ),
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

//! One OTel Resource per traced process, from the composed
//! [`crate::metadata::resource::Resource`] (the same attributes the JSON
//! output shows).

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource as OtelResource;

use crate::metadata::resource::{ResValue, Resource};

pub fn resource_for(r: &Resource) -> OtelResource {
    let attrs = r.attrs.iter().map(|(k, v)| match v {
        ResValue::Str(s) => KeyValue::new(*k, s.clone()),
        ResValue::Int(i) => KeyValue::new(*k, *i),
    });
    OtelResource::builder_empty().with_attributes(attrs).build()
}

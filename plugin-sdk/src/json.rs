//! JSON in and out (crate feature `json`): payloads of user events, queries and query
//! responses read as JSON into your types, and query answers and fired events written from
//! them, with [`serde`] and [`serde_json`] re-exported so the plugin needs no version of its own.
//!
//! ```
//! use serf_plugin_sdk::serde::{Deserialize, Serialize};
//! use serf_plugin_sdk::testing::{query, MockHost};
//! use serf_plugin_sdk::{Error, Event, Host, Plugin};
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "serf_plugin_sdk::serde")]
//! struct Lookup {
//!     key: String,
//! }
//!
//! #[derive(Serialize)]
//! #[serde(crate = "serf_plugin_sdk::serde")]
//! struct Found<'a> {
//!     key: &'a str,
//!     value: u64,
//! }
//!
//! #[derive(Default)]
//! struct Store;
//!
//! impl Plugin for Store {
//!     fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
//!         if let Event::Query(query) = event
//!             && query.name == "lookup"
//!         {
//!             let lookup: Lookup = query.json()?;
//!             host.respond_json(&Found { key: &lookup.key, value: 42 })?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let mut host = MockHost::new();
//! host.deliver(&mut Store, query("lookup", br#"{"key": "a"}"#))?;
//! assert_eq!(host.response(), Some(&br#"{"key":"a","value":42}"#[..]));
//! // A payload that is not the JSON expected is an error naming the event.
//! let error = host.deliver(&mut Store, query("lookup", b"a")).unwrap_err();
//! assert!(error.message().starts_with("query lookup: payload is not the JSON expected"));
//! # Ok::<(), Error>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{Query, QueryResponse, UserEvent};
use crate::error::Error;
use crate::host::Host;

/// `payload` decoded as JSON into `T`; the error names what the payload came with.
fn decode<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(payload)
        .map_err(|error| Error::new(format!("{what}: payload is not the JSON expected: {error}")))
}

/// `value` encoded as JSON.
fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value)
        .map_err(|error| Error::new(format!("cannot encode the payload as JSON: {error}")))
}

impl Query {
    /// The query's payload decoded as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode(&self.payload, &format!("query {}", self.name))
    }
}

impl UserEvent {
    /// The event's payload decoded as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode(&self.payload, &format!("user event {}", self.name))
    }
}

impl QueryResponse {
    /// The answer's payload decoded as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode(&self.payload, &format!("response from {}", self.from))
    }
}

impl dyn Host + '_ {
    /// Answers the query being handled with `value` encoded as JSON: [`Host::respond`]'s rules
    /// and limits (one answer, Serf's response size limit) apply to the encoded bytes.
    pub fn respond_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let payload = encode(value)?;
        Ok(self.respond(&payload)?)
    }

    /// Fires user event `name` with `value` encoded as JSON as its payload, as
    /// [`Host::fire_event`] does (capability `events`).
    pub fn fire_event_json<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
        coalesce: bool,
    ) -> Result<(), Error> {
        let payload = encode(value)?;
        Ok(self.fire_event(name, &payload, coalesce)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::testing::{MockHost, user_event};
    use crate::{Event, Plugin};

    use super::*;

    /// Echoes each user event's JSON object back as a query answer would, sorted.
    #[derive(Default)]
    struct Echo;

    impl Plugin for Echo {
        fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
            if let Event::User(user) = event {
                let map: BTreeMap<String, i64> = user.json()?;
                host.info(&serde_json::to_string(&map).map_err(|e| Error::new(e.to_string()))?);
            }
            Ok(())
        }
    }

    #[test]
    fn user_event_payloads_decode_and_errors_name_the_event() {
        let mut host = MockHost::new();
        host.deliver(&mut Echo, user_event("e", br#"{"b": 2, "a": 1}"#))
            .unwrap();
        assert!(host.logged(crate::LogLevel::Info, r#"{"a":1,"b":2}"#));
        let error = host
            .deliver(&mut Echo, user_event("e", br#"{"a": "x"}"#))
            .unwrap_err();
        assert!(
            error
                .message()
                .starts_with("user event e: payload is not the JSON expected: invalid type"),
            "{error}"
        );
    }

    #[test]
    fn a_response_decodes_and_names_its_node() {
        let response = QueryResponse {
            query: 1,
            name: "q".into(),
            from: "node-b".into(),
            payload: b"[1, 2]".to_vec(),
        };
        assert_eq!(response.json::<Vec<u8>>().unwrap(), [1, 2]);
        let error = response.json::<String>().unwrap_err();
        assert!(
            error.message().starts_with("response from node-b:"),
            "{error}"
        );
    }

    #[test]
    fn a_value_json_cannot_encode_is_an_error() {
        let mut host = MockHost::new();
        let host: &mut dyn Host = &mut host;
        // JSON object keys must be strings.
        let map = BTreeMap::from([(vec![1u8], 1)]);
        let error = host.respond_json(&map).unwrap_err();
        assert!(error.message().starts_with("cannot encode"), "{error}");
    }
}

//! The Confluent wire format through a schema registry test double that
//! follows the registry's documented REST API. `POST
//! /subjects/{subject}/versions` registers a schema and returns its id,
//! `GET /schemas/ids/{id}` returns the schema text, and an unknown id gets
//! the 404 body with error code 40403.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use blameless::codec::Codec;
use blameless::model::{RawEvent, Record, RecordKind};
use serde_json::{json, Value};

#[derive(Default)]
struct Registry {
    /// Schema texts by id, and the subjects registered.
    schemas: Vec<String>,
    subjects: BTreeMap<String, u32>,
}

type Shared = Arc<Mutex<Registry>>;

async fn register(State(registry): State<Shared>, Path(subject): Path<String>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let Some(schema) = body.get("schema").and_then(Value::as_str) else {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error_code": 42201, "message": "Either the input schema or one of its references is invalid"})));
    };
    let mut registry = registry.lock().unwrap();
    let id = match registry.schemas.iter().position(|known| known == schema) {
        Some(index) => index as u32 + 1,
        None => {
            registry.schemas.push(schema.to_string());
            registry.schemas.len() as u32
        }
    };
    registry.subjects.insert(subject, id);
    (StatusCode::OK, Json(json!({"id": id})))
}

async fn schema_by_id(State(registry): State<Shared>, Path(id): Path<u32>) -> (StatusCode, Json<Value>) {
    let registry = registry.lock().unwrap();
    match registry.schemas.get(id as usize - 1) {
        Some(schema) => (StatusCode::OK, Json(json!({"schema": schema}))),
        None => (StatusCode::NOT_FOUND, Json(json!({"error_code": 40403, "message": "Schema not found"}))),
    }
}

async fn start_registry() -> (String, Shared) {
    let shared: Shared = Arc::default();
    let app = Router::new()
        .route("/subjects/{subject}/versions", post(register))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .with_state(Arc::clone(&shared));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, shared)
}

fn raw_event() -> RawEvent {
    RawEvent {
        event_id: "9df95214-a22a-54b2-855f-23ecf9cbe485".into(),
        source: "genesys".into(),
        delivery: "eventbridge".into(),
        received_at_ms: 1_765_551_713_761,
        interval_start_ms: None,
        interval_end_ms: None,
        payload: b"{}".to_vec(),
        capture_json: None,
    }
}

#[tokio::test]
async fn registry_encoding_uses_confluent_wire_format() {
    let (url, registry) = start_registry().await;
    let codec = Codec::with_registry(&url).unwrap();
    let bytes = codec.encode("raw-events", &Record::Raw(raw_event())).await.unwrap();

    let id = registry.lock().unwrap().subjects["raw-events-value"];
    assert_eq!(bytes[0], 0, "magic byte");
    assert_eq!(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]), id);
}

#[tokio::test]
async fn registry_round_trip_restores_record() {
    let (url, _registry) = start_registry().await;
    let writer = Codec::with_registry(&url).unwrap();
    let bytes = writer.encode("raw-events", &Record::Raw(raw_event())).await.unwrap();

    // A fresh codec has no schema cached, so it fetches it by id.
    let reader = Codec::with_registry(&url).unwrap();
    let back: RawEvent = reader.decode(RecordKind::Raw, &bytes).await.unwrap();
    assert_eq!(back, raw_event());
}

#[tokio::test]
async fn unknown_schema_id_is_a_decode_error() {
    let (url, _registry) = start_registry().await;
    let reader = Codec::with_registry(&url).unwrap();
    let bytes = [0u8, 0, 0, 0, 42, 2, 0];
    let error = reader.decode::<RawEvent>(RecordKind::Raw, &bytes).await.unwrap_err();
    assert!(error.to_string().contains("Could not decode"), "{error}");
}

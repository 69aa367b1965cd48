//! Golden bytes: the exact wire form of every message kind. A change here is a protocol
//! change; docs/protocol.md says when it needs a new major or minor version.

use std::path::PathBuf;

use drtrace_proto::app::{
    AppCommand, AppMessage, AppRegistration, AppRequest, ChannelKey, ChannelSetup, EnabledEvent,
};
use drtrace_proto::consumer::{
    ConsumerCommand, ConsumerMessage, ConsumerReply, ConsumerRequest, StreamKey, StreamSetup,
    StreamStats,
};
use drtrace_proto::control::{
    BufferMode, BufferOwnership, ChannelConfig, ControlReply, ControlRequest, CreateSession,
    Domain, EventRule, LogLevelFilter, OutputLocation, SessionTarget,
};
use drtrace_proto::event::{EventDescription, FieldDescription, FieldType, LogLevel};
use drtrace_proto::frame::{decode_json, encode_json};
use drtrace_proto::hello::{DaemonInfo, Hello, HelloReply, Role};
use drtrace_proto::{ErrorCode, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Checks the exact frame bytes (prefix included) and that they decode back to `msg`.
fn golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: &T, json: &str) {
    let bytes = encode_json(msg).unwrap();
    let len = u32::try_from(json.len()).unwrap().to_le_bytes();
    assert_eq!(&bytes[..4], &len, "length prefix of {json}");
    assert_eq!(std::str::from_utf8(&bytes[4..]).unwrap(), json);
    let back: T = decode_json(json.as_bytes()).unwrap();
    assert_eq!(&back, msg);
}

#[test]
fn frame_prefix_is_little_endian_u32() {
    let bytes = encode_json(&ControlRequest::Ping).unwrap();
    assert_eq!(bytes, b"\x0f\x00\x00\x00{\"type\":\"ping\"}");
}

#[test]
fn hello() {
    golden(
        &Hello {
            role: Role::App,
            major: 1,
            minor: 0,
        },
        r#"{"role":"app","major":1,"minor":0}"#,
    );
    golden(
        &HelloReply::Welcome(DaemonInfo {
            pid: 42,
            uid: 1000,
            major: 1,
            minor: 0,
            version: "0.1.0".into(),
        }),
        r#"{"type":"welcome","data":{"pid":42,"uid":1000,"major":1,"minor":0,"version":"0.1.0"}}"#,
    );
    golden(
        &HelloReply::Refused(WireError::new(ErrorCode::VersionMismatch, "no")),
        r#"{"type":"refused","data":{"code":"version_mismatch","message":"no"}}"#,
    );
}

#[test]
fn control_requests() {
    golden(
        &ControlRequest::CreateSession(CreateSession {
            name: Some("s".into()),
            output: OutputLocation::Under(PathBuf::from("/home/a/drtrace-traces")),
        }),
        r#"{"type":"create_session","data":{"name":"s","output":{"kind":"under","path":"/home/a/drtrace-traces"}}}"#,
    );
    golden(
        &ControlRequest::DestroySession {
            target: SessionTarget::Named("s".into()),
        },
        r#"{"type":"destroy_session","data":{"target":{"kind":"named","name":"s"}}}"#,
    );
    golden(
        &ControlRequest::DestroySession {
            target: SessionTarget::All,
        },
        r#"{"type":"destroy_session","data":{"target":{"kind":"all"}}}"#,
    );
    golden(
        &ControlRequest::EnableChannel {
            session: None,
            channel: ChannelConfig {
                name: "c".into(),
                domain: Domain::User,
                subbuf_size: 4096,
                num_subbuf: 2,
                mode: BufferMode::Overwrite,
                buffers: BufferOwnership::PerPid,
                switch_timer_ms: 0,
            },
        },
        r#"{"type":"enable_channel","data":{"session":null,"channel":{"name":"c","domain":"user","subbuf_size":4096,"num_subbuf":2,"mode":"overwrite","buffers":"per_pid","switch_timer_ms":0}}}"#,
    );
    golden(
        &ControlRequest::EnableEvent {
            session: Some("s".into()),
            channel: None,
            domain: Domain::User,
            rules: vec![EventRule {
                pattern: "demo:*".into(),
                loglevel: Some(LogLevelFilter::AtLeast(LogLevel::Warning)),
            }],
        },
        r#"{"type":"enable_event","data":{"session":"s","channel":null,"domain":"user","rules":[{"pattern":"demo:*","loglevel":{"kind":"at_least","level":"warning"}}]}}"#,
    );
    golden(&ControlRequest::StopDaemon, r#"{"type":"stop_daemon"}"#);
    golden(&ControlRequest::ListApps, r#"{"type":"list_apps"}"#);
}

#[test]
fn control_replies() {
    golden(&ControlReply::Ok, r#"{"type":"ok"}"#);
    golden(
        &ControlReply::Error(WireError::new(
            ErrorCode::SessionExists,
            "session 's' already exists",
        )),
        r#"{"type":"error","data":{"code":"session_exists","message":"session 's' already exists"}}"#,
    );
    golden(
        &ControlReply::Destroyed(vec![]),
        r#"{"type":"destroyed","data":[]}"#,
    );
}

fn tick() -> EventDescription {
    EventDescription {
        provider: "demo".into(),
        name: "tick".into(),
        loglevel: LogLevel::Info,
        fields: vec![
            FieldDescription {
                name: "n".into(),
                ty: FieldType::U64,
            },
            FieldDescription {
                name: "msg".into(),
                ty: FieldType::String,
            },
        ],
    }
}

#[test]
fn app_messages() {
    golden(
        &AppMessage::Register(AppRegistration {
            pid: 7,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            procname: "demo".into(),
            abi_major: 1,
            abi_minor: 0,
            bits_per_long: 64,
            tracer_version: "0.1.0".into(),
            events: vec![tick()],
        }),
        r#"{"type":"register","data":{"pid":7,"ppid":1,"uid":1000,"gid":1000,"procname":"demo","abi_major":1,"abi_minor":0,"bits_per_long":64,"tracer_version":"0.1.0","events":[{"provider":"demo","name":"tick","loglevel":"info","fields":[{"name":"n","type":"u64"},{"name":"msg","type":"string"}]}]}}"#,
    );
    golden(
        &AppMessage::Reply {
            seq: 3,
            result: Ok(()),
        },
        r#"{"type":"reply","data":{"seq":3,"result":{"Ok":null}}}"#,
    );
    let key = ChannelKey {
        session: 1,
        channel: 0,
    };
    golden(
        &AppRequest {
            seq: 1,
            command: AppCommand::AddChannel(ChannelSetup {
                key,
                name: "channel0".into(),
                cpus: 2,
                subbuf_size: 4096,
                num_subbuf: 4,
                mode: BufferMode::Discard,
            }),
        },
        r#"{"seq":1,"command":{"type":"add_channel","data":{"key":{"session":1,"channel":0},"name":"channel0","cpus":2,"subbuf_size":4096,"num_subbuf":4,"mode":"discard"}}}"#,
    );
    golden(
        &AppRequest {
            seq: 2,
            command: AppCommand::SetEvents {
                key,
                events: vec![EnabledEvent { index: 0, id: 5 }],
            },
        },
        r#"{"seq":2,"command":{"type":"set_events","data":{"key":{"session":1,"channel":0},"events":[{"index":0,"id":5}]}}}"#,
    );
    golden(
        &AppRequest {
            seq: 4,
            command: AppCommand::RegistrationDone,
        },
        r#"{"seq":4,"command":{"type":"registration_done"}}"#,
    );
}

#[test]
fn consumer_messages() {
    golden(
        &ConsumerRequest {
            seq: 9,
            command: ConsumerCommand::AddStream(StreamSetup {
                key: StreamKey(3),
                session: 1,
                trace_uuid: Uuid::nil(),
                stream_id: 0,
                cpu: 1,
                mode: BufferMode::Discard,
                switch_timer_ms: 0,
                path: PathBuf::from("/t/ust/uid/0/64-bit/channel0_1"),
            }),
        },
        r#"{"seq":9,"command":{"type":"add_stream","data":{"key":3,"session":1,"trace_uuid":"00000000-0000-0000-0000-000000000000","stream_id":0,"cpu":1,"mode":"discard","switch_timer_ms":0,"path":"/t/ust/uid/0/64-bit/channel0_1"}}}"#,
    );
    golden(
        &ConsumerMessage::Reply {
            seq: 9,
            reply: ConsumerReply::Flushed(vec![StreamStats {
                key: StreamKey(3),
                path: PathBuf::from("/t/x"),
                packets: 1,
                events: 10,
                discarded: 2,
                bytes: 300,
                error: None,
            }]),
        },
        r#"{"type":"reply","data":{"seq":9,"reply":{"type":"flushed","data":[{"key":3,"path":"/t/x","packets":1,"events":10,"discarded":2,"bytes":300,"error":null}]}}}"#,
    );
}

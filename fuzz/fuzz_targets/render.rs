#![no_main]
//! AmqpRoute values of any content render to Lua that loads in the engine and
//! carries them unchanged as data: nothing a route holds can run as code.
use amqp_relay::operator::crd::AmqpRoute;
use amqp_relay::operator::lua_literal::lua_str;
use amqp_relay::operator::render::render;
use amqp_relay::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    // Up to four fields from one input, split on NUL.
    let mut parts = data.splitn(4, '\0');
    let key = parts.next().unwrap_or("");
    let exchange = parts.next().unwrap_or("");
    let header = parts.next().unwrap_or("h");
    let value = parts.next().unwrap_or("");

    let lua = mlua::Lua::new();
    let back: mlua::LuaString = lua.load(format!("return {}", lua_str(data))).eval().expect("a literal");
    assert_eq!(&*back.as_bytes(), data.as_bytes());

    let spec = serde_json::json!({
        "match": {"domain": "amqp"},
        "broker": {"url": "amqp://rabbit:5672/%2f"},
        "publish": {"routingKey": key, "exchange": exchange, "contentType": value, "headers": {header: value}},
    });
    let Ok(spec) = serde_json::from_value(spec) else { return };
    let mut r = AmqpRoute::new("r", spec);
    r.metadata.namespace = Some("ns".into());
    let out = render(&[r], &[], value);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.lua");
    std::fs::write(&path, &out.policy).unwrap();
    Policy::load(&path, Default::default()).expect("every rendered policy loads");
});

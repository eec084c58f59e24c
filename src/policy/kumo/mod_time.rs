//! `kumo.time`, as KumoMTA's reference documents it: `Time` and `TimeDelta`
//! objects (fields, metamethods, strftime `format`), the constructors,
//! `sleep`, `epoch_millis`/`since_millis`, and `start_timer`, whose
//! latencies are the `user_lua_latency` histogram on `/metrics`. jiff does
//! the calendar work.

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use mlua::{
    AnyUserData, Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, UserDataRef,
    Value,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::LazyLock;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimerLabel {
    pub label: String,
}

type Latencies = Family<TimerLabel, Histogram, fn() -> Histogram>;

/// Prometheus' default buckets, as KumoMTA's histogram has them.
fn histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// `kumo.time.start_timer` latencies, process-wide like KumoMTA's.
pub static USER_LUA_LATENCY: LazyLock<Latencies> =
    LazyLock::new(|| Family::new_with_constructor(histogram as fn() -> Histogram));

#[derive(Clone, Copy)]
struct Time(Timestamp);

#[derive(Clone, Copy)]
struct TimeDelta(SignedDuration);

fn err(what: &str, e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("kumo.time.{what}: {e}"))
}

impl Time {
    fn utc(&self) -> jiff::Zoned {
        self.0.to_zoned(TimeZone::UTC)
    }
}

impl UserData for Time {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("year", |_, t| Ok(t.utc().year()));
        f.add_field_method_get("month", |_, t| Ok(t.utc().month()));
        f.add_field_method_get("day", |_, t| Ok(t.utc().day()));
        f.add_field_method_get("hour", |_, t| Ok(t.utc().hour()));
        f.add_field_method_get("minute", |_, t| Ok(t.utc().minute()));
        f.add_field_method_get("second", |_, t| Ok(t.utc().second()));
        f.add_field_method_get("unix_timestamp", |_, t| Ok(t.0.as_second()));
        f.add_field_method_get("unix_timestamp_millis", |_, t| Ok(t.0.as_millisecond()));
        f.add_field_method_get("rfc2822", |_, t| {
            jiff::fmt::rfc2822::to_string(&t.utc()).map_err(|e| err("rfc2822", e))
        });
        f.add_field_method_get("rfc3339", |_, t| Ok(t.0.to_string()));
        f.add_field_method_get("elapsed", |_, t| {
            Ok(TimeDelta(Timestamp::now().duration_since(t.0)))
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("format", |_, t, fmt: String| {
            jiff::fmt::strtime::format(fmt.as_str(), &t.utc()).map_err(|e| err("format", e))
        });
        m.add_meta_method(MetaMethod::ToString, |_, t, ()| {
            Ok(format!("{} UTC", t.utc().strftime("%Y-%m-%d %H:%M:%S")))
        });
        m.add_meta_function(
            MetaMethod::Eq,
            |_, (a, b): (UserDataRef<Time>, UserDataRef<Time>)| Ok(a.0 == b.0),
        );
        m.add_meta_function(
            MetaMethod::Add,
            |_, (a, b): (UserDataRef<Time>, UserDataRef<TimeDelta>)| {
                a.0.checked_add(b.0)
                    .map(Time)
                    .map_err(|e| err("Time + TimeDelta", e))
            },
        );
        m.add_meta_function(
            MetaMethod::Sub,
            |lua, (a, b): (UserDataRef<Time>, AnyUserData)| -> mlua::Result<Value> {
                if let Ok(other) = b.borrow::<Time>() {
                    return lua.pack(TimeDelta(a.0.duration_since(other.0)));
                }
                let d = b.borrow::<TimeDelta>()?;
                let t =
                    a.0.checked_sub(d.0)
                        .map_err(|e| err("Time - TimeDelta", e))?;
                lua.pack(Time(t))
            },
        );
    }
}

fn human(d: SignedDuration) -> String {
    let sign = if d.is_negative() { "-" } else { "" };
    let abs = d.unsigned_abs();
    format!("{sign}{}", humantime::format_duration(abs))
}

impl UserData for TimeDelta {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("seconds", |_, d| Ok(d.0.as_secs_f64()));
        f.add_field_method_get("milliseconds", |_, d| Ok(d.0.as_millis() as i64));
        f.add_field_method_get("microseconds", |_, d| Ok(d.0.as_micros() as i64));
        f.add_field_method_get("nanoseconds", |_, d| Ok(d.0.as_nanos() as i64));
        f.add_field_method_get("human", |_, d| Ok(human(d.0)));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(MetaMethod::ToString, |_, d, ()| Ok(human(d.0)));
        m.add_meta_function(
            MetaMethod::Eq,
            |_, (a, b): (UserDataRef<TimeDelta>, UserDataRef<TimeDelta>)| Ok(a.0 == b.0),
        );
        m.add_meta_function(
            MetaMethod::Add,
            |_, (a, b): (UserDataRef<TimeDelta>, UserDataRef<TimeDelta>)| {
                a.0.checked_add(b.0)
                    .map(TimeDelta)
                    .ok_or_else(|| err("TimeDelta + TimeDelta", "overflow"))
            },
        );
        m.add_meta_function(
            MetaMethod::Sub,
            |_, (a, b): (UserDataRef<TimeDelta>, UserDataRef<TimeDelta>)| {
                a.0.checked_sub(b.0)
                    .map(TimeDelta)
                    .ok_or_else(|| err("TimeDelta - TimeDelta", "overflow"))
            },
        );
    }
}

struct Timer {
    label: String,
    start: Instant,
    done: bool,
}

impl Timer {
    fn done(&mut self) -> f64 {
        let secs = self.start.elapsed().as_secs_f64();
        if !std::mem::replace(&mut self.done, true) {
            USER_LUA_LATENCY
                .get_or_create(&TimerLabel {
                    label: self.label.clone(),
                })
                .observe(secs);
        }
        secs
    }
}

impl UserData for Timer {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method_mut("done", |_, t, ()| Ok(t.done()));
        m.add_meta_method_mut(MetaMethod::Close, |_, t, _: Value| {
            t.done();
            Ok(())
        });
    }
}

/// A number of seconds, or a string humantime reads (`'10 seconds'`, `'5m'`).
fn duration(v: Value, what: &str) -> mlua::Result<SignedDuration> {
    match v {
        Value::Integer(n) => Ok(SignedDuration::from_secs(n)),
        Value::Number(n) => SignedDuration::try_from_secs_f64(n).map_err(|e| err(what, e)),
        Value::String(s) => {
            let s = s.to_str()?;
            let d = humantime::parse_duration(&s).map_err(|e| err(what, format!("{s:?}: {e}")))?;
            SignedDuration::try_from(d).map_err(|e| err(what, e))
        }
        other => Err(err(
            what,
            format!(
                "expected seconds or a duration string, not {}",
                other.type_name()
            ),
        )),
    }
}

fn constructors(lua: &Lua, t: &Table) -> mlua::Result<()> {
    t.set(
        "now",
        lua.create_function(|_, ()| Ok(Time(Timestamp::now())))?,
    )?;
    t.set(
        "from_unix_timestamp",
        lua.create_function(|_, v: Value| {
            let d = duration(v, "from_unix_timestamp")?;
            Timestamp::from_duration(d)
                .map(Time)
                .map_err(|e| err("from_unix_timestamp", e))
        })?,
    )?;
    t.set(
        "parse_rfc2822",
        lua.create_function(|_, s: String| {
            jiff::fmt::rfc2822::parse(&s)
                .map(|z| Time(z.timestamp()))
                .map_err(|e| err("parse_rfc2822", e))
        })?,
    )?;
    t.set(
        "parse_rfc3339",
        lua.create_function(|_, s: String| {
            s.parse::<Timestamp>()
                .map(Time)
                .map_err(|e| err("parse_rfc3339", e))
        })?,
    )?;
    t.set(
        "with_ymd_hms",
        lua.create_function(|_, (y, mo, d, h, mi, s): (i16, i8, i8, i8, i8, i8)| {
            jiff::civil::DateTime::new(y, mo, d, h, mi, s, 0)
                .and_then(|dt| dt.to_zoned(TimeZone::UTC))
                .map(|z| Time(z.timestamp()))
                .map_err(|e| err("with_ymd_hms", e))
        })?,
    )?;
    t.set(
        "parse_duration",
        lua.create_function(|_, v: Value| duration(v, "parse_duration").map(TimeDelta))?,
    )?;
    Ok(())
}

pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    constructors(lua, &t)?;
    t.set(
        "sleep",
        lua.create_async_function(|_, v: Value| async move {
            let d = duration(v, "sleep")?;
            let d = d.unsigned_abs();
            tokio::time::sleep(d).await;
            Ok(())
        })?,
    )?;
    t.set(
        "epoch_millis",
        lua.create_function(|_, ()| Ok(Timestamp::now().as_millisecond()))?,
    )?;
    t.set(
        "since_millis",
        lua.create_function(|_, ms: i64| Ok(Timestamp::now().as_millisecond() - ms))?,
    )?;
    t.set(
        "start_timer",
        lua.create_function(|_, label: String| {
            Ok(Timer {
                label,
                start: Instant::now(),
                done: false,
            })
        })?,
    )?;
    super::refuse_missing(lua, &t, "time")?;
    kumo.set("time", t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::kumo::test_lua as lua;

    /// The examples and field lists of KumoMTA's `kumo.time` reference.
    #[tokio::test]
    async fn as_kumomta_documents_them() {
        lua()
            .load(
                r#"
            local t = kumo.time.from_unix_timestamp(1)
            assert(tostring(t) == '1970-01-01 00:00:01 UTC', tostring(t))
            local d = kumo.time.with_ymd_hms(2024, 2, 29, 13, 14, 15)
            assert(d.year == 2024 and d.month == 2 and d.day == 29)
            assert(d.hour == 13 and d.minute == 14 and d.second == 15)
            assert(d.unix_timestamp == 1709212455, d.unix_timestamp)
            assert(d.unix_timestamp_millis == 1709212455000)
            assert(d.rfc3339 == '2024-02-29T13:14:15Z', d.rfc3339)
            assert(d.rfc2822 == 'Thu, 29 Feb 2024 13:14:15 +0000', d.rfc2822)
            assert(d:format '%H:%M:%S' == '13:14:15')
            assert(d:format '%s' == '1709212455')
            assert(kumo.time.parse_rfc3339 '2024-02-29T14:14:15+01:00' == d)
            assert(kumo.time.parse_rfc2822 'Thu, 29 Feb 2024 13:14:15 +0000' == d)
            local delta1 = kumo.time.parse_duration(20)
            local delta2 = kumo.time.parse_duration '10 seconds'
            assert((delta2 - delta1).seconds == -10)
            assert((delta1 - delta2).seconds == 10)
            assert((delta1 + delta2).milliseconds == 30000)
            assert(kumo.time.parse_duration '5m'.human == '5m')
            assert(tostring(kumo.time.parse_duration(-90)) == '-1m 30s')
            assert(d + delta1 - d == delta1)
            assert((d - delta1).unix_timestamp == 1709212435)
            assert(kumo.time.from_unix_timestamp(1.5).unix_timestamp_millis == 1500)
            assert(kumo.time.now().elapsed.seconds >= 0)
            assert(kumo.time.since_millis(kumo.time.epoch_millis() - 1000) >= 1000)
            "#,
            )
            .set_name("doc")
            .exec_async()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn timers_feed_user_lua_latency_and_errors_are_named() {
        let lua = lua();
        lua.load(
            r#"
            do
              local timer <close> = kumo.time.start_timer 'closed-scope'
              kumo.time.sleep(0.01)
            end
            local t = kumo.time.start_timer 'explicit'
            assert(t:done() >= 0)
            "#,
        )
        .exec_async()
        .await
        .unwrap();
        for label in ["closed-scope", "explicit"] {
            let h = USER_LUA_LATENCY.get_or_create(&TimerLabel {
                label: label.into(),
            });
            let mut out = String::new();
            let mut reg = prometheus_client::registry::Registry::default();
            reg.register("h", "h", h.clone());
            prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
            assert!(out.contains("h_count 1"), "{label}: {out}");
        }
        for (code, want) in [
            (
                "kumo.time.parse_rfc3339 'yesterday'",
                "kumo.time.parse_rfc3339:",
            ),
            (
                "kumo.time.parse_duration 'soon'",
                "kumo.time.parse_duration: \"soon\"",
            ),
            (
                "kumo.time.with_ymd_hms(2023, 2, 29, 0, 0, 0)",
                "kumo.time.with_ymd_hms:",
            ),
            ("kumo.time.now():format '%'", "kumo.time.format:"),
        ] {
            let e = lua.load(code).exec().unwrap_err().to_string();
            assert!(e.contains(want), "{code}: {e}");
        }
    }
}

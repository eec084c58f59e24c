//! What the broker connections went through, for `/metrics`: connections
//! opened per broker (a count that climbs during a failover), channels
//! retired after the broker rejected a publish on them, and the rejections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::LazyLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabel {
    /// `host:port`, never the credentials.
    pub broker: String,
}

pub static CONNECTIONS_OPENED: LazyLock<Family<BrokerLabel, Counter>> =
    LazyLock::new(Family::default);
pub static CHANNELS_RETIRED: LazyLock<Family<BrokerLabel, Counter>> =
    LazyLock::new(Family::default);
pub static NACKS: LazyLock<Family<BrokerLabel, Counter>> = LazyLock::new(Family::default);

/// The label for a broker URI: its host and port only.
pub fn label(uri: &str) -> BrokerLabel {
    let broker = match uri.parse::<lapin::uri::AMQPUri>() {
        Ok(u) => format!("{}:{}", u.authority.host, u.authority.port),
        Err(_) => "unparsable".into(),
    };
    BrokerLabel { broker }
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_name_the_broker_without_credentials() {
        assert_eq!(
            super::label("amqp://u:secret@rabbit-0.mq:5672/%2f").broker,
            "rabbit-0.mq:5672"
        );
        assert_eq!(super::label("amqps://h/v").broker, "h:5671");
        assert_eq!(super::label("nonsense ://").broker, "unparsable");
    }
}

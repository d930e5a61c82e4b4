//! LMTP delivery (RFC 2033): one transaction, one reply per recipient.

use std::net::SocketAddr;

use mail_queue::{DeliveryRequest, Outcome};
use smtp_client::{Connection, Timeouts};
use smtp_proto::{
    ClientConfig, ForwardPath, HeloName, MailParameters, MailTransaction, RcptParameters,
    ReversePath,
};

/// Delivery to an LMTP server such as Dovecot.
#[derive(Debug, Clone)]
pub struct Lmtp {
    address: SocketAddr,
    hostname: String,
}

impl Lmtp {
    /// Delivery to the server at `address`.
    pub fn new(address: SocketAddr, hostname: &str) -> Self {
        Self {
            address,
            hostname: hostname.to_owned(),
        }
    }

    /// Delivers to `addresses` (the request's recipients, in order).
    pub async fn deliver(&self, request: &DeliveryRequest, addresses: &[String]) -> Vec<Outcome> {
        match self.try_deliver(request, addresses).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let text = e.reply().to_string().trim_end().to_owned();
                let outcome = if e.is_permanent() {
                    Outcome::Failed(text)
                } else {
                    Outcome::Deferred(text)
                };
                vec![outcome; addresses.len()]
            }
        }
    }

    async fn try_deliver(
        &self,
        request: &DeliveryRequest,
        addresses: &[String],
    ) -> Result<Vec<Outcome>, smtp_client::ClientError> {
        let stream = tokio::net::TcpStream::connect(self.address).await?;
        let config = ClientConfig {
            lmtp: true,
            chunking: true,
            ..ClientConfig::default()
        };
        let mut conn = Connection::open(stream, config, Timeouts::default()).await?;
        let name = HeloName::parse(&self.hostname).unwrap_or(HeloName::Other("localhost".into()));
        conn.hello(name).await?;
        let from = if request.message.from.is_empty() {
            ReversePath::Null
        } else {
            ReversePath::parse(&format!("<{}>", request.message.from)).unwrap_or(ReversePath::Null)
        };
        let recipients = addresses
            .iter()
            .map(|a| {
                let to = ForwardPath::parse(&format!("<{a}>"))
                    .map_err(smtp_client::ClientError::Protocol)?;
                Ok((to, RcptParameters::default()))
            })
            .collect::<Result<Vec<_>, smtp_client::ClientError>>()?;
        let params = MailParameters {
            smtputf8: request.message.params.smtputf8,
            ..MailParameters::default()
        };
        let result = conn
            .send(
                MailTransaction {
                    from,
                    params,
                    recipients,
                },
                &request.body,
            )
            .await?;
        conn.quit().await;
        Ok(result
            .recipients
            .iter()
            .map(|reply| {
                let text = reply.to_string().trim_end().to_owned();
                if reply.is_positive_completion() {
                    Outcome::Delivered(text)
                } else if reply.is_permanent() {
                    Outcome::Failed(text)
                } else {
                    Outcome::Deferred(text)
                }
            })
            .collect())
    }
}

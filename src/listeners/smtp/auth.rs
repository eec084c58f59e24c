//! SMTP AUTH (RFC 4954): the SASL PLAIN (RFC 4616) and LOGIN exchanges,
//! decoded apart from the session; the policy's `smtp_server_auth_plain`
//! event decides whether the credentials are good.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// What a client claims: who it acts as, who it is, and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub authz: String,
    pub authc: String,
    pub password: String,
}

/// Why a client's AUTH data was refused, with the reply it deserves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAuth {
    pub code: u16,
    pub text: &'static str,
}

const MALFORMED: BadAuth = BadAuth {
    code: 501,
    text: "5.5.2 cannot decode the authentication data",
};

/// The longest AUTH response accepted (RFC 4954 allows 12288 octets a line).
pub const MAX_RESPONSE: usize = 12288;

/// A base64 response line; `*` cancels the exchange.
pub fn decode(line: &str) -> Result<Vec<u8>, BadAuth> {
    let line = line.trim();
    if line == "*" {
        return Err(BadAuth {
            code: 501,
            text: "5.0.0 authentication cancelled",
        });
    }
    if line.len() > MAX_RESPONSE {
        return Err(MALFORMED);
    }
    // RFC 4954: "=" stands for an empty initial response.
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| MALFORMED)
}

fn text(bytes: &[u8]) -> Result<String, BadAuth> {
    String::from_utf8(bytes.to_vec()).map_err(|_| MALFORMED)
}

/// `authzid NUL authcid NUL passwd` (RFC 4616); an empty authzid means authcid.
pub fn plain(response: &str) -> Result<Credentials, BadAuth> {
    let raw = decode(response)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    let (authz, authc, password) = (text(authz)?, text(authc)?, text(password)?);
    if authc.is_empty() {
        return Err(MALFORMED);
    }
    Ok(Credentials {
        authz: if authz.is_empty() {
            authc.clone()
        } else {
            authz
        },
        authc,
        password,
    })
}

/// One LOGIN step (the user name or the password), base64 decoded.
pub fn login_step(response: &str) -> Result<String, BadAuth> {
    text(&decode(response)?)
}

/// The server's LOGIN prompts, base64 as the mechanism wants them.
pub const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn plain_responses() {
        let c = plain(&b64(b"\0daniel\0tiger")).unwrap();
        assert_eq!(
            (c.authz.as_str(), c.authc.as_str(), c.password.as_str()),
            ("daniel", "daniel", "tiger")
        );
        let c = plain(&b64(b"ops\0daniel\0p\0ss")).err();
        assert_eq!(c, Some(MALFORMED), "a fourth part is malformed");
        let c = plain(&b64(b"ops\0daniel\0")).unwrap();
        assert_eq!((c.authz.as_str(), c.password.as_str()), ("ops", ""));
        for bad in [
            "not base64!",
            &b64(b"daniel"),
            &b64(b"\0\0pw"),
            &b64(b"\0d\0\xff"),
        ] {
            assert!(plain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(plain("*").unwrap_err().code, 501);
    }

    #[test]
    fn login_steps() {
        assert_eq!(login_step(&b64(b"daniel")).unwrap(), "daniel");
        assert_eq!(login_step("=").unwrap(), "");
        assert!(login_step(&"A".repeat(MAX_RESPONSE + 4)).is_err());
        assert_eq!(
            (
                login_step(LOGIN_USERNAME).unwrap(),
                login_step(LOGIN_PASSWORD).unwrap()
            ),
            ("Username:".to_string(), "Password:".to_string())
        );
    }
}

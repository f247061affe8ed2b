//! The model: what the server must answer on a connection, from the bytes the client sent.

use std::collections::BTreeSet;

use uffd_core::proto::{self, ErrorCode, Frame, Limits, Role};

use super::connection::Live;
use super::target::{Target, NO_SESSION, PAGE};

/// What the server must answer on a connection, from the bytes the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expect {
    /// No frame at all, then the close (no hello, or an incomplete first frame).
    Silence,
    /// One error frame with this code, then the close.
    Refused(ErrorCode),
    /// A welcome (or, if `may_refuse`, that error instead), then the answers.
    Welcome(Welcomed),
}

/// A welcome the model expects, and what must follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Welcomed {
    pub(super) role: Role,
    pub(super) checksums: bool,
    /// Asked for checksums, and a synthetic image's parameters will do (and it is one).
    pub(super) synthetic: bool,
    pub(super) may_refuse: Option<ErrorCode>,
    /// The session id the welcome must carry (joins and resumptions name it).
    pub(super) session: Option<u64>,
    /// A resumption (urgent hello with a session id and `HELLO_RESUME`).
    pub(super) resumed: bool,
    /// Urgent: the error frame ending the connection, if a later frame is bad.
    pub(super) then: Option<ErrorCode>,
    /// Urgent: the pages the requests asked for.
    pub(super) requested: BTreeSet<u64>,
    /// Resumption: the pages the client said it has (never sent again).
    pub(super) have: BTreeSet<u64>,
}

/// The requests that follow the handshake at `pos`, and the error that ends them, if any.
fn requests(sent: &[u8], mut pos: usize, limits: &Limits) -> (BTreeSet<u64>, Option<ErrorCode>) {
    let mut requested = BTreeSet::new();
    loop {
        match proto::decode(&sent[pos..], limits) {
            Ok(Some((Frame::Request { offset, len }, used))) => {
                requested.extend(offset / PAGE..(offset + len) / PAGE);
                pos += used;
            }
            Ok(Some(_)) | Err(_) => return (requested, Some(ErrorCode::Protocol)),
            Ok(None) => return (requested, None),
        }
    }
}

/// What the server must answer on `conn`, from the bytes sent on it. `resumed`: the sessions
/// earlier connections of the script resumed (created or replaced).
pub(super) fn expect(target: &Target<'_>, conn: &Live, resumed: &BTreeSet<u64>) -> Expect {
    let limits = target.limits();
    let sent = &conn.sent;
    let (hello, mut pos) = match proto::decode(sent, &limits) {
        Err(_) => return Expect::Refused(ErrorCode::Protocol),
        Ok(None) => return Expect::Silence,
        Ok(Some((Frame::Hello(hello), used))) => (hello, used),
        Ok(Some(_)) => return Expect::Refused(ErrorCode::HandshakeRequired),
    };
    if let Some(token) = target.token {
        if hello.token != token {
            return Expect::Refused(ErrorCode::Unauthorized);
        }
    }
    if hello.image_id != 0 && hello.image_id != target.image.id() {
        return Expect::Refused(ErrorCode::ImageMismatch);
    }
    let full = target
        .leftover_sessions
        .then_some(ErrorCode::TooManySessions);
    let mut welcomed = Welcomed {
        role: hello.role,
        checksums: hello.flags & proto::HELLO_WANT_CHECKSUMS != 0,
        synthetic: hello.flags & proto::HELLO_WANT_CHECKSUMS != 0
            && hello.flags & proto::HELLO_SYNTHETIC_OK != 0
            && target.image.synthetic_params().is_some(),
        may_refuse: None,
        session: None,
        resumed: false,
        then: None,
        requested: BTreeSet::new(),
        have: BTreeSet::new(),
    };
    match (hello.role, hello.session) {
        (Role::Urgent, 0) => {
            (welcomed.requested, welcomed.then) = requests(sent, pos, &limits);
            welcomed.may_refuse = full;
        }
        (Role::Urgent, id) if hello.flags & proto::HELLO_RESUME != 0 => {
            // The whole received bitmap follows, in have frames, before the welcome.
            let words = target.image.pages().div_ceil(64);
            let mut have = Vec::new();
            while (have.len() as u64) < words {
                match proto::decode(&sent[pos..], &limits) {
                    Ok(Some((frame @ Frame::Have { first_word, .. }, used)))
                        if first_word == have.len() as u64 =>
                    {
                        have.extend(frame.have_words());
                        pos += used;
                    }
                    Ok(Some(_)) | Err(_) => return Expect::Refused(ErrorCode::Protocol),
                    // The end of the stream inside the handshake: closed without a word.
                    Ok(None) => return Expect::Silence,
                }
            }
            welcomed.have = (0..target.image.pages())
                .filter(|&p| have[(p / 64) as usize] & (1 << (p % 64)) != 0)
                .collect();
            (welcomed.requested, welcomed.then) = requests(sent, pos, &limits);
            welcomed.session = Some(id);
            welcomed.resumed = true;
            welcomed.may_refuse = full;
        }
        (Role::Urgent, _) => return Expect::Refused(ErrorCode::UnknownSession),
        (Role::Background, id)
            if (Some(id) == conn.joined && id != NO_SESSION)
                || resumed.contains(&id)
                || target.leftover_sessions =>
        {
            // The session may have ended (its urgent connection failed) or have its
            // background connection already: "unknown session" is then the answer.
            welcomed.session = Some(id);
            welcomed.may_refuse = Some(ErrorCode::UnknownSession);
        }
        (Role::Background, _) => return Expect::Refused(ErrorCode::UnknownSession),
    }
    Expect::Welcome(welcomed)
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SystemSupport

/// A replication connection after its handshake: the peer's hello, and the
/// two halves of its secure channel.
struct SecureConnection {
    /// The peer's hello: authenticated by the key confirmation.
    let peer: HelloMessage
    /// Seals what this side sends (one writer at a time).
    let sealer: FrameSealer
    /// Opens what the peer sends.
    var reader: FrameReader
    /// Frames that arrived right behind the peer's key confirmation.
    var pending: [ReplicationFrame]
}

/// The handshake of every replication connection (docs/replication.md):
///
/// 1. the connecting side sends its hello (with a fresh nonce);
/// 2. the accepting side answers with its own hello and, sealed with the keys
///    both hellos and the cluster secret give (`ClusterSecret.connectionKeys`),
///    a key confirmation;
/// 3. the connecting side checks that confirmation and sends its own.
///
/// Only then does either side act on anything: a peer without the secret,
/// or one replaying a captured handshake (the other side's nonce is new),
/// cannot produce the confirmation. Every read before that has `deadline`.
enum ReplicationHandshake {
    /// The connecting side's part, on a connected socket.
    static func connect(fd: Int32, hello: HelloMessage, secret: ClusterSecret, deadline: UInt64) throws(ConnectionEnd)
        -> SecureConnection
    {
        let mine = hello.renewed()
        guard Sockets.writeAll(fd, FrameFormat.helloFrame(mine)) else { throw .failed(errno) }
        var reader = FrameReader(fd: fd)
        let theirs = try readHello(&reader, deadline: deadline)
        guard theirs.protocolVersion == HelloMessage.currentProtocolVersion else {
            throw .protocolViolation(
                "the peer speaks protocol \(theirs.protocolVersion), this node \(HelloMessage.currentProtocolVersion)")
        }
        let (sealer, opener) = secret.connectionKeys(clientHello: mine, serverHello: theirs, accepted: false)
        let pending = try readConfirmation(&reader, opener: opener, deadline: deadline)
        guard Sockets.writeAll(fd, sealer.seal(ReplicationFrame(type: .keyConfirmation))) else { throw .failed(errno) }
        return SecureConnection(peer: theirs, sealer: sealer, reader: reader, pending: pending)
    }

    /// The accepting side's part, on an accepted socket.
    static func accept(fd: Int32, hello: HelloMessage, secret: ClusterSecret, deadline: UInt64) throws(ConnectionEnd)
        -> SecureConnection
    {
        var reader = FrameReader(fd: fd)
        let theirs = try readHello(&reader, deadline: deadline)
        let mine = hello.renewed()
        guard theirs.protocolVersion == HelloMessage.currentProtocolVersion else {
            _ = Sockets.writeAll(fd, FrameFormat.helloFrame(mine))  // so the peer can log what it met
            throw .protocolViolation("protocol version \(theirs.protocolVersion)")
        }
        let (sealer, opener) = secret.connectionKeys(clientHello: theirs, serverHello: mine, accepted: true)
        guard Sockets.writeAll(fd, FrameFormat.helloFrame(mine) + sealer.seal(ReplicationFrame(type: .keyConfirmation)))
        else { throw .failed(errno) }
        let pending = try readConfirmation(&reader, opener: opener, deadline: deadline)
        return SecureConnection(peer: theirs, sealer: sealer, reader: reader, pending: pending)
    }

    /// Opens the peer's sealed frames from now on and reads its key
    /// confirmation; returns the frames that came right behind it.
    private static func readConfirmation(_ reader: inout FrameReader, opener: FrameOpener, deadline: UInt64)
        throws(ConnectionEnd) -> [ReplicationFrame]
    {
        reader.startOpening(with: opener)
        var frames = try reader.frames(deadline: deadline)
        guard frames.removeFirst().type == .keyConfirmation else {
            throw .protocolViolation("the peer's first sealed frame is not its key confirmation")
        }
        return frames
    }

    private static func readHello(_ reader: inout FrameReader, deadline: UInt64) throws(ConnectionEnd) -> HelloMessage {
        let frames = try reader.frames(deadline: deadline)
        guard frames.count == 1, frames[0].type == .hello else {
            throw .protocolViolation("the first frame is not a hello")
        }
        do {
            return try HelloMessage.decode(frames[0].payload)
        } catch {
            throw .protocolViolation("hello: \(error.reason)")
        }
    }
}

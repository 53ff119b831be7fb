#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SessionCore
import SystemSupport

/// Why a replication connection ended.
enum ConnectionEnd: Error, CustomStringConvertible {
    /// The peer closed it, or it was shut down locally.
    case closed
    /// recv failed (a reset, or the idle timeout).
    case failed(Int32)
    /// The peer sent bytes that are not valid frames.
    case badFrame(FrameError)
    /// A valid frame that breaks the protocol (wrong type here, undecodable payload).
    case protocolViolation(String)
    /// The handshake did not finish within its deadline.
    case handshakeTimeout
    /// The peer's incarnation was declared dead (`Membership`): nothing more of it is applied.
    case fenced

    var description: String {
        switch self {
        case .closed: "connection closed"
        case .failed(let e): e == EAGAIN || e == EWOULDBLOCK ? "idle timeout" : "recv failed: errno \(e)"
        case .badFrame(let error): "\(error)"
        case .protocolViolation(let message): "protocol violation: \(message)"
        case .handshakeTimeout: "the handshake did not finish in time"
        case .fenced: "the peer's incarnation was declared dead"
        }
    }
}

/// The reading side of one blocking replication socket: frames out of bytes.
struct FrameReader {
    let fd: Int32
    private var decoder = FrameDecoder()
    private var buffer = [UInt8](repeating: 0, count: 64 * 1024)

    init(fd: Int32) {
        self.fd = fd
    }

    /// After the handshake: sealed frames only, opened with `opener`.
    mutating func startOpening(with opener: FrameOpener) { decoder.startOpening(with: opener) }

    /// Blocks for at least one complete frame; returns every complete frame
    /// received. With a `deadline` (monotonic nanoseconds), gives up then
    /// (`handshakeTimeout`), however slowly bytes keep arriving.
    mutating func frames(deadline: UInt64? = nil) throws(ConnectionEnd) -> [ReplicationFrame] {
        while true {
            var frames: [ReplicationFrame] = []
            do {
                while let frame = try decoder.next() {
                    frames.append(frame)
                    if frame.type == .hello { break }  // the next frames need the keys this hello gives
                }
            } catch {
                throw .badFrame(error)
            }
            if !frames.isEmpty { return frames }
            if let deadline {
                let now = monotonicNanos()
                guard now < deadline else { throw .handshakeTimeout }
                Sockets.setReceiveTimeout(fd, millis: max(1, Int((deadline - now) / 1_000_000)))
            }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 {
                let partial = decoder.bufferedByteCount
                if partial > 0 { throw .badFrame(FrameError(.truncated, "the stream ended \(partial) bytes into a frame")) }
                throw .closed
            }
            if n < 0 {
                if errno == EINTR { continue }
                if deadline != nil && (errno == EAGAIN || errno == EWOULDBLOCK) { throw .handshakeTimeout }
                throw .failed(errno)
            }
            buffer.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }
}

/// Shuts a socket down both ways: blocked reads and accepts on it return.
func shutdownSocket(_ fd: Int32) {
    _ = shutdown(fd, Int32(SHUT_RDWR))
}

/// Sends what the socket takes without blocking; returns the bytes sent
/// (fewer on EAGAIN or an error: the caller leaves the rest to a blocking writer).
func sendWithoutBlocking(_ fd: Int32, _ bytes: [UInt8]) -> Int {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n > 0 {
                offset += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        return offset
    }
}

/// Splits encoded items into `update`/`snapshotChunk` payloads of about
/// `chunkBytes` each. Only the last carries `sequence` (the others 0): the
/// peer's acknowledgement of it must mean that every chunk was applied.
func chunkedBatches(_ items: [[UInt8]], chunkBytes: Int, sequence: UInt64) -> [[UInt8]] {
    var chunks = chunked(items, chunkBytes: chunkBytes)
    if chunks.isEmpty { chunks.append((0, [])) }  // an empty state still carries the sequence
    return chunks.enumerated().map { i, chunk in
        UpdateBatch.encode(
            sequence: i == chunks.count - 1 ? sequence : 0, itemCount: chunk.count, encodedItems: chunk.bytes)
    }
}

/// Encoded items concatenated into runs of about `chunkBytes` (an item larger
/// than that is a run of its own), with each run's item count.
func chunked(_ items: [[UInt8]], chunkBytes: Int) -> [(count: Int, bytes: [UInt8])] {
    var chunks: [(count: Int, bytes: [UInt8])] = []
    var current: [UInt8] = []
    var count = 0
    for item in items {
        if count > 0 && current.count + item.count > chunkBytes {
            chunks.append((count, current))
            current = []
            count = 0
        }
        current.append(contentsOf: item)
        count += 1
    }
    if count > 0 { chunks.append((count, current)) }
    return chunks
}

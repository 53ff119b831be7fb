/// The body of the request a connection is receiving.
///
/// Its storage grows as bytes arrive: at most `initialCapacity` is set aside
/// when the head announces a length, and it doubles from there, never beyond
/// the most the body can hold (its announced length, or the body size limit
/// for a chunked body). A client that announces a large body and sends little
/// of it does not make the server set the announced size aside.
struct RequestBodyBuffer {
    /// The most set aside before any byte of a body arrived.
    static let initialCapacity = 64 * 1024

    private(set) var bytes: [UInt8] = []
    /// The most the current body can hold.
    private var limit = 0

    /// Bytes set aside for the body (at least its size so far).
    var capacity: Int { bytes.capacity }

    /// Starts a body: `announcedLength` from Content-Length (nil when chunked),
    /// `limit` the largest body accepted.
    mutating func start(announcedLength: Int?, limit: Int) {
        bytes = []
        self.limit = announcedLength.map { min($0, limit) } ?? limit
        if let announcedLength {
            bytes.reserveCapacity(Self.initialCapacity(announcedLength: min(announcedLength, limit)))
        }
    }

    mutating func append(_ more: [UInt8]) {
        let needed = bytes.count + more.count
        if needed > bytes.capacity {
            bytes.reserveCapacity(Self.grownCapacity(current: bytes.capacity, needed: needed, limit: limit))
        }
        bytes.append(contentsOf: more)
    }

    /// Hands the body over, and keeps nothing of it.
    mutating func take() -> [UInt8] {
        defer { bytes = [] }
        return bytes
    }

    /// What is set aside at the head of a body that announced its length.
    static func initialCapacity(announcedLength: Int) -> Int {
        min(announcedLength, initialCapacity)
    }

    /// The capacity to grow to when `needed` bytes do not fit in `current`:
    /// double, at most `limit`, and at least `needed`.
    static func grownCapacity(current: Int, needed: Int, limit: Int) -> Int {
        max(needed, min(limit, current * 2))
    }
}

/// Redis Cluster's key space: 16,384 slots, a key's slot from CRC16 of its
/// hash tag, and which primary owns each slot.
public enum RedisClusterSlot {
    /// The number of slots.
    public static let count = 16_384

    /// The slot of `key`: CRC16 (XMODEM) of its hash tag — the bytes between
    /// the first `{` and the next `}`, when not empty — or of the whole key,
    /// modulo 16,384.
    public static func of(key: some Collection<UInt8>) -> Int {
        Int(crc16(hashTag(of: key)) & UInt16(count - 1))
    }

    /// The part of `key` that is hashed (Redis's rule).
    static func hashTag<C: Collection<UInt8>>(of key: C) -> C.SubSequence {
        if let open = key.firstIndex(of: UInt8(ascii: "{")) {
            let rest = key[key.index(after: open)...]
            if let close = rest.firstIndex(of: UInt8(ascii: "}")), close != rest.startIndex {
                return rest[..<close]
            }
        }
        return key[...]
    }

    /// CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), as Redis Cluster computes it.
    static func crc16(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ crc16Table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return crc
    }

    private static let crc16Table: [UInt16] = (0..<256).map { byte in
        var crc = UInt16(byte) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}

/// A Redis server's address.
public struct RedisNodeAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Which primary owns each slot, as `CLUSTER SLOTS` told it (plus the
/// redirections seen since). Reads and writes go to primaries only.
struct RedisSlotMap: Sendable, Equatable {
    /// The primaries, in the order first seen.
    private(set) var primaries: [RedisNodeAddress] = []
    /// For each slot, an index into `primaries`; `unassigned` when no primary serves it.
    private var owners = [UInt16](repeating: unassigned, count: RedisClusterSlot.count)
    private static let unassigned = UInt16.max

    /// The primary that owns `slot`, if any.
    func primary(forSlot slot: Int) -> RedisNodeAddress? {
        let owner = owners[slot]
        return owner == Self.unassigned ? nil : primaries[Int(owner)]
    }

    /// How many slots have a primary.
    var assignedSlots: Int { owners.lazy.filter { $0 != Self.unassigned }.count }

    /// Records that `slot` is served by `primary` (a `MOVED` redirection).
    mutating func assign(_ slot: Int, to primary: RedisNodeAddress) {
        let index: Int
        if let known = primaries.firstIndex(of: primary) {
            index = known
        } else {
            primaries.append(primary)
            index = primaries.count - 1
        }
        owners[slot] = UInt16(index)
    }

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id…], replicas…], …]`.
    /// A primary with an empty or `?` host is at `askedHost` (Redis's rule for "the host you asked").
    init(clusterSlots reply: RedisValue, askedHost: String) throws {
        guard let ranges = reply.array else {
            throw RedisError(.protocolViolation, "CLUSTER SLOTS: not an array (\(reply))")
        }
        for range in ranges {
            guard let fields = range.array, fields.count >= 3, let start = fields[0].int, let end = fields[1].int,
                let primary = fields[2].array, primary.count >= 2, let host = primary[0].string,
                let port = primary[1].int, 0 <= start, start <= end, end < RedisClusterSlot.count,
                (1...65_535).contains(port)
            else {
                throw RedisError(.protocolViolation, "CLUSTER SLOTS: malformed slot range \(range)")
            }
            let address = RedisNodeAddress(host: host.isEmpty || host == "?" ? askedHost : host, port: Int(port))
            for slot in Int(start)...Int(end) { assign(slot, to: address) }
        }
    }

    init() {}
}

/// What a cluster error reply asks the client to do.
enum RedisRedirect: Sendable, Equatable {
    /// The slot lives on another primary for good: update the map, resend there.
    case moved(slot: Int, to: RedisNodeAddress)
    /// The slot is migrating and this key is already on the target: resend there after `ASKING`.
    case ask(slot: Int, to: RedisNodeAddress)
    /// A multi-key command met a slot in migration, or the cluster is down or
    /// failing over: wait, refresh the map, resend. Redis ran nothing.
    case retryLater

    /// The redirect an error reply (or the message of a `RedisError(.server)`) names, if any.
    init?(errorMessage: String) {
        // RedisError(.server) messages are "<context>: <reply>".
        let reply = errorMessage.range(of: ": ").map { String(errorMessage[$0.upperBound...]) } ?? errorMessage
        for text in [errorMessage, reply] {
            if text.hasPrefix("TRYAGAIN") || text.hasPrefix("CLUSTERDOWN") {
                self = .retryLater
                return
            }
            let parts = text.split(separator: " ")
            guard parts.count == 3, parts[0] == "MOVED" || parts[0] == "ASK", let slot = Int(parts[1]),
                (0..<RedisClusterSlot.count).contains(slot),
                let (host, port) = try? RedisConfiguration.hostAndPort(String(parts[2]), defaultPort: 6379)
            else { continue }
            let address = RedisNodeAddress(host: host, port: port)
            self = parts[0] == "MOVED" ? .moved(slot: slot, to: address) : .ask(slot: slot, to: address)
            return
        }
        return nil
    }
}

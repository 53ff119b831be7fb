import ClusterLocks

/// 64-bit FNV-1a of a lock name: a stable key (the same in every process), for advisory lock keys and channel names.
func lockNameHash(_ name: String) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in name.utf8 {
        hash ^= UInt64(byte)
        hash &*= 0x100_0000_01b3
    }
    return hash
}

extension UInt64 {
    var hex: String {
        let digits = String(self, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

/// Lower-case letters, digits and `_`, not starting with a digit, at most 48 characters: safe to put in SQL as is.
func isPlainIdentifier(_ name: String) -> Bool {
    guard let first = name.utf8.first, !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first), name.utf8.count <= 48
    else { return false }
    return name.utf8.allSatisfy {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
            || $0 == UInt8(ascii: "_")
    }
}

/// Runs `body`, turning PostgreSQL failures into `LockError(.unavailable)`.
func unavailableOnFailure<T>(_ body: () throws -> T) throws -> T {
    try LockError.unavailableOnFailure(of: PostgresError.self, service: "PostgreSQL", body)
}

/// Runs `body`; when its table or sequence does not exist yet (SQLSTATE 42P01), creates the schema
/// with `create` and runs `body` once more: a service works on a fresh database with no set-up step.
func creatingSchemaWhenMissing<T>(_ create: () throws -> Void, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as PostgresError where error.sqlState == "42P01" {
        try create()
        return try body()
    }
}

/// Runs one `CREATE … IF NOT EXISTS` statement, again when a concurrent creator won the race
/// (PostgreSQL reports it as a unique violation on its catalog, or as "already exists").
func createIfMissing(_ create: () throws -> Void) throws {
    for attempt in 1...3 {
        do {
            return try create()
        } catch let error as PostgresError where (error.sqlState == "23505" || error.sqlState == "42P07") && attempt < 3 {
            continue
        }
    }
}

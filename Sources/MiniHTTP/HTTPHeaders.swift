/// An ordered list of HTTP header fields with case-insensitive lookup.
public struct HTTPHeaders: Sendable, Equatable, Sequence, ExpressibleByDictionaryLiteral {
    public typealias Field = (name: String, value: String)
    private var storage: [(name: String, value: String)] = []

    public init() {}

    public init(_ fields: [(String, String)]) {
        storage = fields.map { (name: $0.0, value: $0.1) }
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.init(elements)
    }

    public var count: Int { storage.count }
    public var isEmpty: Bool { storage.isEmpty }

    public func makeIterator() -> IndexingIterator<[Field]> {
        storage.makeIterator()
    }

    /// Appends a field, keeping any existing fields with the same name.
    public mutating func add(name: String, value: String) {
        storage.append((name: name, value: value))
    }

    /// Replaces every field named `name` with a single field.
    public mutating func replaceOrAdd(name: String, value: String) {
        remove(name: name)
        storage.append((name: name, value: value))
    }

    /// Removes every field named `name` (case-insensitive).
    public mutating func remove(name: String) {
        storage.removeAll { asciiCaseInsensitiveEquals($0.name, name) }
    }

    /// Removes the fields named `name` whose value satisfies `predicate`.
    public mutating func remove(name: String, where predicate: (String) -> Bool) {
        storage.removeAll { asciiCaseInsensitiveEquals($0.name, name) && predicate($0.value) }
    }

    /// The first value of the field named `name`, if any.
    public subscript(name: String) -> String? {
        firstValue(of: name) { $0 }
    }

    /// The first non-nil `transform` of a value of the field named `name`, in order.
    /// (Looks at the fields in place: a loop over copies of them retained every name and value.)
    public func firstValue<T>(of name: String, _ transform: (String) -> T?) -> T? {
        for i in storage.indices where asciiCaseInsensitiveEquals(storage[i].name, name) {
            if let found = transform(storage[i].value) { return found }
        }
        return nil
    }

    /// Every value of the field named `name`, in order.
    public func values(of name: String) -> [String] {
        storage.compactMap { asciiCaseInsensitiveEquals($0.name, name) ? $0.value : nil }
    }

    public func contains(name: String) -> Bool {
        firstValue(of: name) { _ in true } ?? false
    }

    /// Whether a comma-separated list header (e.g. `Connection`) contains `token`.
    public func containsToken(_ token: String, in name: String) -> Bool {
        // Every request asks this of `Connection`: the fields in place, no list of values.
        firstValue(of: name) { value in
            value.split(separator: ",").contains { asciiCaseInsensitiveEquals(trimmedOWS($0), token) } ? true : nil
        } ?? false
    }

    public static func == (lhs: HTTPHeaders, rhs: HTTPHeaders) -> Bool {
        lhs.storage.count == rhs.storage.count
            && zip(lhs.storage, rhs.storage).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }
}

/// The byte with ASCII A-Z lowercased.
@inlinable
public func lowerASCII(_ byte: UInt8) -> UInt8 {
    (byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte
}

/// Compares two strings ignoring ASCII case (the fast path for two `String`s: their UTF-8 bytes in place).
public func asciiCaseInsensitiveEquals(_ a: String, _ b: String) -> Bool {
    guard a.utf8.count == b.utf8.count else { return false }
    let equal = a.utf8.withContiguousStorageIfAvailable { x in
        b.utf8.withContiguousStorageIfAvailable { y in
            for i in 0..<x.count where x[i] != y[i] && lowerASCII(x[i]) != lowerASCII(y[i]) { return false }
            return true
        }
    }
    if let equal = equal.flatMap({ $0 }) { return equal }
    return asciiCaseInsensitiveEquals(Substring(a), Substring(b))  // bridged strings: the generic path
}

/// Compares two strings ignoring ASCII case.
public func asciiCaseInsensitiveEquals<A: StringProtocol, B: StringProtocol>(_ a: A, _ b: B) -> Bool {
    let au = a.utf8, bu = b.utf8
    guard au.count == bu.count else { return false }
    for (x, y) in zip(au, bu) where lowerASCII(x) != lowerASCII(y) {
        return false
    }
    return true
}

/// Strips spaces and horizontal tabs from both ends.
func trimmedOWS<S: StringProtocol>(_ s: S) -> String {
    var scalars = Substring(s)
    while let first = scalars.first, first == " " || first == "\t" { scalars.removeFirst() }
    while let last = scalars.last, last == " " || last == "\t" { scalars.removeLast() }
    return String(scalars)
}

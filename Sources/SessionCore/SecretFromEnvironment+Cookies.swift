import SystemSupport

extension SecretFromEnvironment {
    /// The cookie signing keys of `SESSION_COOKIE_SECRET` (one key) or the
    /// lines of the file `SESSION_COOKIE_SECRET_FILE` names (the first signs,
    /// all verify), each checked by `SessionCookieCodec`; empty (unsigned
    /// cookies) when neither is set. Errors name the variable.
    public static func cookieSigningKeys() throws(SigningKeyError) -> [[UInt8]] {
        let keys: [[UInt8]]
        do { keys = try secrets("SESSION_COOKIE_SECRET") ?? [] } catch { throw SigningKeyError(error.message) }
        do {
            _ = try SessionCookieCodec(signingKeys: keys)
        } catch {
            throw SigningKeyError("SESSION_COOKIE_SECRET: \(error.message)")
        }
        return keys
    }
}

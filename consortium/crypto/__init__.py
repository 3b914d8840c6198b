"""Keys, signatures over exact bytes, hashes, Merkle trees and the canonical encoding."""

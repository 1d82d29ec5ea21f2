// Import rules `npm test` checks (dependency-cruiser): no cycles, and the layering of the
// tree (README "Layout"): src/ is the library and imports nothing above it; actors/ and
// trainer/ build on src/; cluster/ (processes and the CLI) on all three.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    { name: 'no-circular', severity: 'error', comment: 'an import cycle', from: {}, to: { circular: true } },
    { name: 'src-is-the-library', severity: 'error', comment: 'src/ must not import actors/, trainer/ or cluster/',
      from: { path: '^src/' }, to: { path: '^(actors|trainer|cluster)/' } },
    { name: 'actors-stay-thin', severity: 'error', comment: 'actors/ must not import trainer/ or cluster/',
      from: { path: '^actors/' }, to: { path: '^(trainer|cluster)/' } },
    { name: 'trainer-is-not-an-actor', severity: 'error', comment: 'trainer/ must not import actors/ (except protocol types) or cluster/',
      from: { path: '^trainer/' }, to: { path: '^cluster/' } },
    // Inside src/: wire/ is the bottom (pure protocol); ledger/, store/ and bus/ build on it
    // alone, except that store/ hashes with native/ (BLAKE3 block checksums); native/ on bus/
    // (rendezvous); job/ on all of those. No folder imports upwards.
    { name: 'src-wire-is-the-bottom', severity: 'error', from: { path: '^src/wire/' }, to: { path: '^src/(bus|ledger|store|job|native|runtime)/' } },
    { name: 'src-ledger-store-bus-on-wire', severity: 'error', from: { path: '^src/(ledger|store|bus)/' }, to: { path: '^src/(job|runtime)/|^src/(ledger|store|bus)/', pathNot: '^src/$1/' } },
    { name: 'src-ledger-bus-not-on-native', severity: 'error', from: { path: '^src/(ledger|bus)/' }, to: { path: '^src/native/' } },
    { name: 'src-native-on-bus', severity: 'error', from: { path: '^src/native/' }, to: { path: '^src/(job|runtime|ledger|store)/' } },
    { name: 'src-chat-is-pure', severity: 'error', comment: 'src/chat/ (tokenizer, template, masks, draft vocabulary) must not reach NATS, the addon or the processes',
      from: { path: '^src/chat/' }, to: { path: '^(src/(bus|native)|actors|trainer|cluster)/' } },
    { name: 'no-test-code-in-the-tree', severity: 'error', from: { path: '^(src|actors|trainer|cluster)/' }, to: { path: '^(test|bench)/' } },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(node_modules|dist|build)/|^test/fixtures/lint/' },
  },
};

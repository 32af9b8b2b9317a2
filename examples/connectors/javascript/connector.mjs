// A pasarela agency connector in JavaScript, written from docs/protocol.md alone.
//
// Provider: POST /agencies/<CODE>/messages receives messages forwarded by the gateway,
// verifies the sender's Pasarela-Signature and the gateway's Pasarela-Receipt with keys
// from the verified configuration document (GET /v1/conf), and answers signed.
// Consumer: POST /trigger/send {"to", "service", "body"} signs a message, sends it to
// the gateway's /v1/messages (retrying 503/429 with the same jti), and verifies the
// answer's signature and receipt.
//
// Configuration (environment): PASARELA_GATEWAY_URL, PASARELA_AGENCY, PASARELA_KEY (PEM
// PKCS#8), PASARELA_CERT (PEM), PASARELA_CA (PEM, optional but recommended), PORT.

import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { CompactSign, compactVerify, importJWK, importPKCS8, importX509 } from 'jose';

// -- constants from the protocol -----------------------------------------------------

const LEEWAY = 30; // s, section 9
const LIFETIME = 60; // s, our token lifetime (max 300)
const MAX_LIFETIME = 300;
const MAX_BODY = 1024 * 1024; // 1 MiB
const MAX_TOKEN = 8192;
const TYP_MSG = 'pasarela-msg+jwt';
const TYP_RECEIPT = 'pasarela-receipt+jwt';
const TYP_CONF = 'pasarela-conf+jwt';
const AGENCY_CODE = /^[A-Z0-9][A-Z0-9-]{1,31}$/;
const SERVICE_CODE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const MESSAGE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const DIGEST = /^[A-Za-z0-9_-]{43}$/;
const B64URL = /^[A-Za-z0-9_-]*$/;

const TITLES = {
  malformed: [400, 'Malformed message'],
  'bad-signature': [401, 'Signature does not verify'],
  'algorithm-not-allowed': [400, 'Algorithm not allowed'],
  'forbidden-header': [400, 'Forbidden JOSE header'],
  'unknown-key': [401, 'Unknown key'],
  'key-expired': [401, 'Certificate outside its validity period'],
  'sender-mismatch': [403, 'Sender does not own the key'],
  expired: [401, 'Message expired'],
  'clock-skew': [401, 'Message issued in the future'],
  'body-digest-mismatch': [400, 'Body digest mismatch'],
  replay: [409, 'Message id reused'],
  'not-authorized': [403, 'No access right'],
  'payload-too-large': [413, 'Payload too large'],
  'not-found': [404, 'Not found'],
  'method-not-allowed': [405, 'Method not allowed'],
  'invalid-request': [400, 'Invalid request'],
};

// -- configuration --------------------------------------------------------------------

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === '') {
    console.error(`connector: the environment variable ${name} is required`);
    process.exit(2);
  }
  return value;
}

const GATEWAY_URL = env('PASARELA_GATEWAY_URL').replace(/\/+$/, '');
const CODE = env('PASARELA_AGENCY');
const KEY_PEM = readFileSync(env('PASARELA_KEY'), 'utf8');
const CERT_PEM = readFileSync(env('PASARELA_CERT'), 'utf8');
const CA_PEM = process.env.PASARELA_CA ? readFileSync(process.env.PASARELA_CA, 'utf8') : null;
const PORT = Number(env('PORT', '8800'));
const HOST = process.env.HOST || '127.0.0.1';

// -- small helpers ----------------------------------------------------------------------

const b64url = (buffer) => Buffer.from(buffer).toString('base64url');
const sha256 = (bytes) => b64url(createHash('sha256').update(bytes).digest());
const now = () => Math.floor(Date.now() / 1000);
const newJti = () => `${CODE}-${b64url(randomBytes(12))}`;

function kidOf(certificate) {
  return sha256(certificate.raw);
}

function commonName(certificate) {
  return subjectField(certificate, 'CN');
}

function subjectField(certificate, name) {
  for (const line of certificate.subject.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0 && line.slice(0, at) === name) return line.slice(at + 1);
  }
  return null;
}

function withinValidity(certificate, at) {
  const from = Date.parse(certificate.validFrom) / 1000;
  const to = Date.parse(certificate.validTo) / 1000;
  return from <= at && at <= to;
}

class Refusal extends Error {
  constructor(code, detail) {
    super(detail);
    this.code = code;
    this.detail = detail;
  }
}

/** Strict base64url (section 2): alphabet, no padding, no length leaving one over. */
function decodeSegment(segment, what) {
  if (!B64URL.test(segment) || segment.length % 4 === 1) {
    throw new Refusal('malformed', `${what} is not base64url`);
  }
  return Buffer.from(segment, 'base64url');
}

function decodeJsonObject(segment, what) {
  let value;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(decodeSegment(segment, what)));
  } catch (error) {
    if (error instanceof Refusal) throw error;
    throw new Refusal('malformed', `${what} is not UTF-8 JSON`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Refusal('malformed', `${what} is not a JSON object`);
  }
  return value;
}

/** Splits a compact JWS and checks its protected header (section 5): alg, typ, kid only. */
function readToken(token, typ, what) {
  if (typeof token !== 'string' || token.length === 0) throw new Refusal('malformed', `no ${what}`);
  if (token.length > MAX_TOKEN) throw new Refusal('malformed', `${what} over ${MAX_TOKEN} characters`);
  const parts = token.split('.');
  if (parts.length !== 3) throw new Refusal('malformed', `${what} is not three segments`);
  const header = decodeJsonObject(parts[0], `${what} header`);
  if (header.alg !== 'EdDSA') throw new Refusal('algorithm-not-allowed', `${what}: alg is not EdDSA`);
  for (const name of Object.keys(header)) {
    if (!['alg', 'typ', 'kid'].includes(name)) {
      throw new Refusal('forbidden-header', `${what}: header member ${name} is not allowed`);
    }
  }
  if (header.typ !== typ) throw new Refusal('malformed', `${what}: typ is not ${typ}`);
  if (typeof header.kid !== 'string' || header.kid === '') throw new Refusal('malformed', `${what}: no kid`);
  const claims = decodeJsonObject(parts[1], `${what} claims`);
  decodeSegment(parts[2], `${what} signature`);
  return { header, claims };
}

async function verifySignature(token, key, what) {
  try {
    await compactVerify(token, key, { algorithms: ['EdDSA'] });
  } catch {
    throw new Refusal('bad-signature', `${what}: signature does not verify`);
  }
}

const isNumericDate = (v) => Number.isInteger(v) && v >= 0 && v < 2 ** 40;

/** Shape of message claims (section 5). */
function checkMessageClaims(claims, what) {
  const bad = (name) => new Refusal('malformed', `${what}: claim ${name} missing or of the wrong shape`);
  if (typeof claims.iss !== 'string' || !AGENCY_CODE.test(claims.iss)) throw bad('iss');
  if (typeof claims.aud !== 'string' || !AGENCY_CODE.test(claims.aud)) throw bad('aud');
  if (typeof claims.svc !== 'string' || !SERVICE_CODE.test(claims.svc)) throw bad('svc');
  if (typeof claims.jti !== 'string' || !MESSAGE_ID.test(claims.jti)) throw bad('jti');
  if (!isNumericDate(claims.iat)) throw bad('iat');
  if (!isNumericDate(claims.exp)) throw bad('exp');
  if (typeof claims.bh !== 'string' || !DIGEST.test(claims.bh)) throw bad('bh');
  if (claims.corr !== undefined && claims.corr !== null) {
    if (typeof claims.corr !== 'string' || !MESSAGE_ID.test(claims.corr)) throw bad('corr');
  }
  if (claims.exp <= claims.iat || claims.exp - claims.iat > MAX_LIFETIME) {
    throw new Refusal('malformed', `${what}: exp must be after iat and at most ${MAX_LIFETIME} s later`);
  }
}

function checkTimes(claims, what) {
  const t = now();
  if (claims.exp + LEEWAY < t) throw new Refusal('expired', `${what} expired`);
  if (claims.iat - LEEWAY > t) throw new Refusal('clock-skew', `${what} issued in the future`);
}

// -- own identity ----------------------------------------------------------------------------

const PRIVATE_KEY = await importPKCS8(KEY_PEM, 'EdDSA');
const OWN_CERT = new X509Certificate(CERT_PEM);
const OWN_KID = kidOf(OWN_CERT);
if (commonName(OWN_CERT) !== CODE) {
  console.error(`connector: ${env('PASARELA_CERT')} certifies ${commonName(OWN_CERT)}, not ${CODE}`);
  process.exit(2);
}

// -- the configuration document (section 11) -----------------------------------------------

let conf = null; // {document, gateway: {code, kid, key}, agencies: Map kid -> {code, key}, refreshAt}
let confPending = null;
let lastForcedRefresh = 0;

async function fetchConf() {
  const response = await request('GET', `${GATEWAY_URL}/v1/conf`, {}, null);
  if (response.status !== 200) throw new Error(`GET /v1/conf answered ${response.status}`);
  const body = response.body;
  const document = JSON.parse(body.toString('utf8'));
  const gateway = document.gateway ?? {};
  const caPem = CA_PEM ?? document.ca; // without PASARELA_CA: trust on first use
  const ca = new X509Certificate(caPem);
  const caKey = ca.publicKey;
  const t = now();

  // 2. the gateway's certificate
  const gwCert = new X509Certificate(gateway.certificate);
  if (!gwCert.verify(caKey)) throw new Error('conf: the gateway certificate is not signed by the CA');
  if (commonName(gwCert) !== gateway.code) throw new Error('conf: gateway certificate CN is not gateway.code');
  if (!withinValidity(gwCert, t)) throw new Error('conf: gateway certificate outside its validity');
  const gwKid = kidOf(gwCert);
  if (gwKid !== gateway.kid || gwKid !== gateway.jwk?.kid) throw new Error('conf: gateway kid mismatch');
  const rawX = gwCert.publicKey.export({ format: 'jwk' }).x;
  if (rawX !== gateway.jwk.x) throw new Error('conf: gateway jwk.x is not the certificate key');
  const gwKey = await importJWK({ kty: 'OKP', crv: 'Ed25519', x: gateway.jwk.x }, 'EdDSA');

  // 3. the document's signature
  const token = response.headers['pasarela-signature'];
  const { header, claims } = readToken(token, TYP_CONF, 'conf signature');
  if (header.kid !== gwKid) throw new Error('conf: signature kid is not gateway.kid');
  await verifySignature(token, gwKey, 'conf signature');
  if (claims.iss !== gateway.code) throw new Error('conf: iss is not gateway.code');
  if (claims.bh !== sha256(body)) throw new Error('conf: bh does not match the document');
  if (!isNumericDate(claims.exp) || claims.exp + LEEWAY < t) throw new Error('conf: signature expired');

  // 4. agency certificates
  const agencies = new Map();
  for (const agency of document.agencies ?? []) {
    for (const entry of agency.certificates ?? []) {
      if (entry.revoked !== false || entry.generation !== document.generation) continue;
      let cert;
      try {
        cert = new X509Certificate(entry.pem);
      } catch {
        continue;
      }
      if (kidOf(cert) !== entry.kid) continue;
      if (commonName(cert) !== agency.code) continue;
      if (!cert.verify(caKey)) continue;
      const key = await importX509(entry.pem, 'EdDSA');
      agencies.set(entry.kid, { code: agency.code, key, certificate: cert });
    }
  }
  const expiresAt = Number.isInteger(claims.exp) ? claims.exp : t + 60;
  conf = {
    document,
    gateway: { code: gateway.code, kid: gwKid, key: gwKey },
    agencies,
    refreshAt: Math.min(expiresAt - 60, t + 300),
  };
  return conf;
}

async function getConf({ force = false } = {}) {
  if (!force && conf && now() < conf.refreshAt) return conf;
  if (!confPending) {
    confPending = fetchConf().finally(() => {
      confPending = null;
    });
  }
  return confPending;
}

/** The trusted agency key named by kid, fetching the document again once if unknown. */
async function agencyKey(kid) {
  let current = await getConf();
  if (!current.agencies.has(kid) && now() - lastForcedRefresh >= 1) {
    lastForcedRefresh = now();
    current = await getConf({ force: true });
  }
  const entry = current.agencies.get(kid);
  if (!entry) throw new Refusal('unknown-key', 'kid is not a trusted, current agency certificate');
  if (!withinValidity(entry.certificate, now())) throw new Refusal('key-expired', 'certificate outside validity');
  return entry;
}

// -- verification of messages, answers and receipts ------------------------------------------

/** Section 5/6: a message token (request or answer) against the body bytes. */
async function verifyMessage(token, body, what) {
  const { header, claims } = readToken(token, TYP_MSG, what);
  const entry = await agencyKey(header.kid);
  await verifySignature(token, entry.key, what);
  if (claims.iss !== entry.code) throw new Refusal('sender-mismatch', `${what}: iss is not the key's owner`);
  checkMessageClaims(claims, what);
  checkTimes(claims, what);
  if (claims.bh !== sha256(body)) throw new Refusal('body-digest-mismatch', `${what}: bh does not match the body`);
  return claims;
}

/** Section 7: a receipt for the message with claims `message`. */
async function verifyReceipt(token, message, { corr } = {}) {
  const what = 'receipt';
  const current = await getConf();
  let header, claims;
  try {
    ({ header, claims } = readToken(token, TYP_RECEIPT, what));
  } catch (error) {
    throw new Refusal('bad-signature', error.message);
  }
  if (header.kid !== current.gateway.kid) throw new Refusal('unknown-key', 'receipt kid is not the gateway kid');
  try {
    await verifySignature(token, current.gateway.key, what);
  } catch {
    throw new Refusal('bad-signature', 'receipt signature does not verify with the gateway key');
  }
  if (claims.iss !== current.gateway.code) throw new Refusal('bad-signature', 'receipt iss is not the gateway');
  if (claims.jti !== message.jti) throw new Refusal('bad-signature', 'receipt jti is not the message jti');
  if (claims.bh !== message.bh) throw new Refusal('bad-signature', 'receipt bh is not the message bh');
  if (!Number.isInteger(claims.seq) || claims.seq < 1) throw new Refusal('bad-signature', 'receipt seq invalid');
  if (typeof claims.lh !== 'string' || !DIGEST.test(claims.lh)) throw new Refusal('bad-signature', 'receipt lh invalid');
  if (!isNumericDate(claims.iat)) throw new Refusal('bad-signature', 'receipt iat invalid');
  if (corr !== undefined && claims.corr !== corr) throw new Refusal('bad-signature', 'receipt corr is not our jti');
  if (corr === undefined && claims.corr !== undefined && claims.corr !== null) {
    throw new Refusal('bad-signature', 'a request receipt carries corr');
  }
  return claims;
}

async function sign(claims) {
  return new CompactSign(new TextEncoder().encode(JSON.stringify(claims)))
    .setProtectedHeader({ alg: 'EdDSA', typ: TYP_MSG, kid: OWN_KID })
    .sign(PRIVATE_KEY);
}

function messageClaims({ aud, svc, jti, body, corr }) {
  const iat = now();
  const claims = { iss: CODE, aud, svc, jti, iat, exp: iat + LIFETIME, bh: sha256(body) };
  if (corr !== undefined) claims.corr = corr;
  return claims;
}

// -- HTTP client ------------------------------------------------------------------------------

function request(method, url, headers, body, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const client = target.protocol === 'https:' ? https : http;
    const req = client.request(
      target,
      { method, headers: { ...headers, ...(body ? { 'Content-Length': body.length } : {}) }, timeout: timeoutMs },
      (res) => {
        const chunks = [];
        let size = 0;
        res.on('data', (chunk) => {
          size += chunk.length;
          if (size > MAX_BODY + 1) {
            req.destroy(new Error('answer over 1 MiB'));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

// -- provider: receiving messages (section 6) -----------------------------------------------

const SERVICES = {
  'ati.request': async (claims, body) => ({ status: 200, body: { estado: '00', recibido: claims.jti } }),
  ping: async (claims) => ({ status: 200, body: { estado: '00', recibido: claims.jti } }),
};

// (iss, jti) -> {bh, forget, answer: {status, headers, body}}
const seen = new Map();

function forgetOld() {
  const t = now();
  for (const [key, entry] of seen) if (entry.forget < t) seen.delete(key);
}

function problemBody(code, detail, jti) {
  const [status, title] = TITLES[code] ?? [400, 'Refused'];
  const document = { type: `urn:pasarela:problem:${code}`, title, status, detail };
  if (jti !== undefined) document.jti = jti;
  return { status, bytes: Buffer.from(JSON.stringify(document)) };
}

/** The request's claims as read (unverified), to address a signed refusal, or null. */
function claimsAsRead(token) {
  try {
    const claims = decodeJsonObject(String(token).split('.')[1] ?? '', 'claims');
    if (AGENCY_CODE.test(claims.iss ?? '') && SERVICE_CODE.test(claims.svc ?? '') && MESSAGE_ID.test(claims.jti ?? '')) {
      return claims;
    }
  } catch {
    // unreadable: the refusal goes unsigned
  }
  return null;
}

async function signedAnswer(requestClaims, status, bytes, contentType) {
  const claims = messageClaims({
    aud: requestClaims.iss,
    svc: requestClaims.svc,
    jti: newJti(),
    body: bytes,
    corr: requestClaims.jti,
  });
  return { status, headers: { 'Content-Type': contentType, 'Pasarela-Signature': await sign(claims) }, body: bytes };
}

async function refuse(code, detail, token) {
  const asRead = token ? claimsAsRead(token) : null;
  const { status, bytes } = problemBody(code, detail, asRead?.jti);
  if (asRead) {
    // Signed, so that the gateway relays the refusal instead of answering 502.
    return signedAnswer(asRead, status, bytes, 'application/problem+json');
  }
  return { status, headers: { 'Content-Type': 'application/problem+json' }, body: bytes };
}

async function receive(req, body) {
  const token = req.headers['pasarela-signature'];
  if (body.length > MAX_BODY) return refuse('payload-too-large', 'body over 1 MiB', token);
  if (token === undefined) return refuse('malformed', 'no Pasarela-Signature', null);
  let claims;
  try {
    claims = await verifyMessage(token, body, 'Pasarela-Signature');
    if (claims.aud !== CODE) throw new Refusal('bad-signature', `aud is ${claims.aud}, not ${CODE}`);
    const receipt = req.headers['pasarela-receipt'];
    if (receipt === undefined) throw new Refusal('malformed', 'no Pasarela-Receipt');
    await verifyReceipt(receipt, claims);
  } catch (error) {
    if (error instanceof Refusal) return refuse(error.code, error.detail, token);
    throw error;
  }
  forgetOld();
  const key = `${claims.iss}\u0000${claims.jti}`;
  const earlier = seen.get(key);
  if (earlier) {
    if (earlier.bh !== claims.bh) return refuse('replay', `jti ${claims.jti} already used with another body`, token);
    return earlier.answer; // a duplicate delivery: the same answer, byte for byte
  }
  const handler = SERVICES[claims.svc];
  let answer;
  if (!handler) {
    answer = await refuse('not-authorized', `${CODE} does not offer ${claims.svc}`, token);
  } else {
    const result = await handler(claims, body);
    const bytes = Buffer.from(JSON.stringify(result.body));
    answer = await signedAnswer(claims, result.status, bytes, 'application/json');
  }
  seen.set(key, { bh: claims.bh, forget: claims.exp + LEEWAY + 60, answer });
  return answer;
}

// -- consumer: sending messages -------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function send(to, service, payload) {
  const body = Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload));
  const jti = newJti();
  let token = null;
  let tokenExp = 0;
  let response = null;
  for (let attempt = 1; attempt <= 5; attempt += 1) {
    if (token === null || tokenExp - now() < 10) {
      const claims = messageClaims({ aud: to, svc: service, jti, body }); // same jti, re-signed
      token = await sign(claims);
      tokenExp = claims.exp;
    }
    try {
      response = await request(
        'POST',
        `${GATEWAY_URL}/v1/messages`,
        { 'Content-Type': 'application/json', 'Pasarela-Signature': token },
        body,
      );
    } catch (error) {
      response = null;
      if (attempt === 5) throw error;
      await sleep(500 * attempt);
      continue;
    }
    if (response.status !== 503 && response.status !== 429) break;
    if (response.headers['pasarela-signature']) break; // the receiver's own 429: not ours to retry
    const wait = Math.min(Number.parseInt(response.headers['retry-after'] ?? '1', 10) || 1, 30);
    if (attempt < 5) await sleep(wait * 1000);
  }
  const answerToken = response.headers['pasarela-signature'];
  if (answerToken === undefined) {
    // A problem document from the gateway (unsigned): nothing of the receiver to verify.
    return { kind: 'gateway-problem', status: response.status, body: response.body, jti };
  }
  let answer;
  try {
    answer = await verifyMessage(answerToken, response.body, 'answer signature');
    if (answer.iss !== to) throw new Refusal('sender-mismatch', `answer iss is ${answer.iss}, not ${to}`);
    if (answer.aud !== CODE) throw new Refusal('bad-signature', 'answer aud is not us');
    if (answer.corr !== jti) throw new Refusal('malformed', 'answer corr is not our jti');
    if (answer.svc !== service) throw new Refusal('malformed', 'answer svc is not the service called');
    const receipt = response.headers['pasarela-receipt'];
    if (receipt === undefined) throw new Refusal('malformed', 'no Pasarela-Receipt on the answer');
    await verifyReceipt(receipt, answer, { corr: jti });
  } catch (error) {
    if (error instanceof Refusal) return { kind: 'unverified', reason: `${error.code}: ${error.detail}`, jti };
    throw error;
  }
  return { kind: 'verified', status: response.status, body: response.body, jti, answer };
}

function decodeBody(bytes) {
  const text = bytes.toString('utf8');
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function trigger(body) {
  let input;
  try {
    input = JSON.parse(body.toString('utf8'));
  } catch {
    input = null;
  }
  if (!input || typeof input.to !== 'string' || typeof input.service !== 'string' || !('body' in input)) {
    return json(400, { error: 'expected a JSON object {"to", "service", "body"}' });
  }
  const result = await send(input.to, input.service, input.body);
  if (result.kind === 'unverified') {
    return json(502, { error: 'verification failed', reason: result.reason, jti: result.jti });
  }
  if (result.kind === 'gateway-problem') {
    return json(200, {
      status: result.status,
      body: decodeBody(result.body),
      receipt_verified: false,
      from: 'gateway',
      jti: result.jti,
    });
  }
  return json(200, {
    status: result.status,
    body: decodeBody(result.body),
    receipt_verified: true,
    jti: result.jti,
    answer_jti: result.answer.jti,
  });
}

function json(status, value) {
  return { status, headers: { 'Content-Type': 'application/json' }, body: Buffer.from(JSON.stringify(value)) };
}

// -- the server -----------------------------------------------------------------------------

const MESSAGES_PATH = `/agencies/${CODE}/messages`;

const server = http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size <= MAX_BODY + 1) chunks.push(chunk);
  });
  req.on('end', async () => {
    const body = Buffer.concat(chunks);
    const path = new URL(req.url, 'http://localhost').pathname;
    let answer;
    try {
      if (path === MESSAGES_PATH && req.method === 'POST') answer = await receive(req, body);
      else if (path === '/trigger/send' && req.method === 'POST') answer = await trigger(body);
      else if (path === '/health' && req.method === 'GET') answer = json(200, { status: 'ok', agency: CODE });
      else if (path === MESSAGES_PATH || path === '/trigger/send') {
        const { status, bytes } = problemBody('method-not-allowed', `${req.method} not allowed`);
        answer = { status, headers: { 'Content-Type': 'application/problem+json', Allow: 'POST' }, body: bytes };
      } else {
        const { status, bytes } = problemBody('not-found', `no such path ${path}`);
        answer = { status, headers: { 'Content-Type': 'application/problem+json' }, body: bytes };
      }
    } catch (error) {
      // Transient trouble (e.g. the configuration document could not be fetched): 503, so
      // the sender retries.
      console.error('connector:', error);
      answer = json(503, { error: String(error?.message ?? error) });
      answer.headers['Retry-After'] = '1';
    }
    res.writeHead(answer.status, { ...answer.headers, 'Content-Length': answer.body.length });
    res.end(answer.body);
  });
});

// Keep idle connections longer than the gateway's client keeps them (4 s): a server that
// closes first races the gateway's next delivery on that connection.
server.keepAliveTimeout = 30_000;
server.headersTimeout = 31_000;
server.listen(PORT, HOST, () => {
  console.log(`connector: ${CODE} (kid ${OWN_KID}) listening on http://${HOST}:${PORT}${MESSAGES_PATH}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}

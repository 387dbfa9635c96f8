// An HTTP front for mqtt-tasks workers: POST /tasks publishes a task over MQTT, GET /tasks/:id
// reports its last known status. Speaks only the wire protocol (docs/protocol.md).
import { randomUUID } from 'node:crypto';
import Fastify from 'fastify';
import mqtt from 'mqtt';

const ID = '^[A-Za-z0-9_.:\\-]{1,128}$';
const TASK_NAME = '^[A-Za-z_][A-Za-z0-9_.:\\-]{0,199}$';
const FINAL_STATES = new Set(['succeeded', 'dead', 'cancelled', 'expired']);

export function configFromEnv(env = process.env) {
  return {
    mqttUrl: env.MQTT_URL ?? 'mqtt://127.0.0.1:1883',
    mqttVersion: Number(env.MQTT_VERSION ?? 5), // 5, or 4 for an MQTT 3.1.1 broker
    prefix: env.PREFIX ?? 'mqtt-tasks',
    queue: env.QUEUE ?? 'default',
    host: env.HOST ?? '127.0.0.1',
    port: Number(env.PORT ?? 3000),
    follow: env.FOLLOW ?? 'all', // 'all': subscribe P/status/+ ; 'own': only tasks posted here
    maxTracked: Number(env.MAX_TRACKED ?? 10000),
    logLevel: env.LOG_LEVEL ?? 'info',
  };
}

/** A final event ends the task: a terminal state, or `failed` with `final: true`. */
export const isFinal = (event) => FINAL_STATES.has(event.state) || event.final === true;

const postSchema = {
  body: {
    type: 'object',
    required: ['task'],
    properties: {
      task: { type: 'string', pattern: TASK_NAME },
      args: { type: 'array', default: [] },
      kwargs: { type: 'object', default: {} },
      id: { type: 'string', pattern: ID },
      queue: { type: 'string', pattern: ID },
      wait: { type: 'boolean', default: false },
      timeout: { type: 'number', exclusiveMinimum: 0, maximum: 300, default: 30 },
      max_attempts: { type: 'integer', minimum: 1, maximum: 1000 },
      task_timeout: { type: 'number', exclusiveMinimum: 0 },
      expires: { type: 'number', exclusiveMinimum: 0 },
    },
  },
};

export async function createService(config) {
  const clientId = `node-${randomUUID().slice(0, 12)}`;
  const replyTopic = `${config.prefix}/replies/${clientId}`;
  const statusTopic = (id) => `${config.prefix}/status/${id}`;
  const mqtt5 = config.mqttVersion === 5;
  const statuses = new Map(); // task id -> last status event (bounded, oldest dropped first)
  const waiters = new Map(); // correlation key -> resolve(final event)

  const remember = (event) => {
    statuses.delete(event.id);
    statuses.set(event.id, event);
    if (statuses.size > config.maxTracked) statuses.delete(statuses.keys().next().value);
  };

  // Fastify coerces types by default ("2" -> 2, "x" -> ["x"]): a malformed body would become
  // another task. Strict validation answers 400 instead, as README.md promises.
  const app = Fastify({ logger: { level: config.logLevel }, ajv: { customOptions: { coerceTypes: false } } });
  const client = await mqtt.connectAsync(config.mqttUrl, {
    clientId, protocolVersion: config.mqttVersion, clean: true, reconnectPeriod: 1000,
  });
  client.on('error', (err) => app.log.error({ err }, 'mqtt error'));
  client.on('message', (topic, payload, packet) => {
    let event;
    try {
      event = JSON.parse(payload.toString('utf8'));
    } catch {
      app.log.warn({ topic }, 'ignoring a message that is not JSON');
      return;
    }
    if (typeof event !== 'object' || event === null || typeof event.id !== 'string') return;
    remember(event);
    if (topic === replyTopic) {
      // MQTT 5 echoes our Correlation Data; MQTT 3.1.1 echoes the `correlation` field.
      const key = packet.properties?.correlationData?.toString('utf8') ?? event.correlation ?? event.id;
      waiters.get(key)?.(event);
    } else if (config.follow === 'own' && isFinal(event)) {
      client.unsubscribe(topic);
    }
  });
  await client.subscribeAsync(replyTopic, { qos: 1 });
  if (config.follow === 'all') await client.subscribeAsync(statusTopic('+'), { qos: 1 });

  app.post('/tasks', { schema: postSchema }, async (request, reply) => {
    if (!client.connected) return reply.code(503).send({ error: 'not connected to the MQTT broker' });
    const b = request.body;
    const id = b.id ?? randomUUID();
    const correlation = `${clientId}:${id}`;
    const task = { id, task: b.task, args: b.args, kwargs: b.kwargs };
    if (b.max_attempts !== undefined) task.max_attempts = b.max_attempts;
    if (b.task_timeout !== undefined) task.timeout = b.task_timeout;
    if (b.expires !== undefined) task.expires_at = Date.now() / 1000 + b.expires;
    const properties = {};
    if (mqtt5) {
      properties.responseTopic = replyTopic;
      properties.correlationData = Buffer.from(correlation);
      if (b.expires !== undefined) properties.messageExpiryInterval = Math.ceil(b.expires);
    } else {
      task.reply_to = replyTopic;
      task.correlation = correlation;
    }

    let done;
    const final = new Promise((resolve) => { done = resolve; });
    waiters.set(correlation, done);
    try {
      if (config.follow === 'own') await client.subscribeAsync(statusTopic(id), { qos: 1 });
      remember({ id, state: 'queued', attempt: 1, ts: Date.now() / 1000, task: b.task });
      const queue = b.queue ?? config.queue;
      await client.publishAsync(`${config.prefix}/tasks/${queue}`, JSON.stringify(task), { qos: 1, properties });
      if (!b.wait) return reply.code(202).send({ id, state: 'queued', status_url: `/tasks/${id}` });
      let timer;
      const timedOut = new Promise((resolve) => { timer = setTimeout(resolve, b.timeout * 1000, null); });
      const event = await Promise.race([final, timedOut]);
      clearTimeout(timer);
      if (event === null) {
        const last = statuses.get(id);
        return reply.code(202).send({ id, state: last?.state ?? 'queued', status_url: `/tasks/${id}` });
      }
      return reply.code(200).send(event);
    } finally {
      waiters.delete(correlation);
    }
  });

  app.get('/tasks/:id', async (request, reply) => {
    const event = statuses.get(request.params.id);
    if (event === undefined) return reply.code(404).send({ error: `no status known for task ${request.params.id}` });
    return event;
  });

  app.get('/healthz', async (request, reply) =>
    reply.code(client.connected ? 200 : 503).send({ mqtt: client.connected ? 'connected' : 'disconnected' }));

  app.addHook('onClose', async () => { await client.endAsync(); });
  return app;
}

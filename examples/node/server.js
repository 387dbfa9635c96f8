// Entry point: `node server.js` (configuration in environment variables, see README.md).
import { configFromEnv, createService } from './service.js';

const config = configFromEnv();
const app = await createService(config);
const url = await app.listen({ host: config.host, port: config.port });
app.log.info({ url, mqtt: config.mqttUrl, prefix: config.prefix }, 'ready');

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, async () => {
    await app.close();
    process.exit(0);
  });
}

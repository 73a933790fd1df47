// @kubernetes/client-node, the official JavaScript client, as its users drive it: the
// kubeconfig loader, version and discovery, CRUD on config maps with each patch type it offers,
// label and field selectors, a Watch and an Informer, pod logs, the scale subresource, and errors
// as ApiException carrying upstream's Status.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as k8s from '@kubernetes/client-node';

const NS = 'js-client';
const kc = new k8s.KubeConfig();
kc.loadFromFile(process.env.KUBECONFIG);
const core = kc.makeApiClient(k8s.CoreV1Api);
const apps = kc.makeApiClient(k8s.AppsV1Api);
const image = process.env.FLOTILLA_IMAGE_RUN ?? 'ticker:e2e';

async function eventually(check, seconds = 60) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`still ${JSON.stringify(last)} after ${seconds} s`);
}

test('version, discovery and a namespace', async () => {
  const version = await kc.makeApiClient(k8s.VersionApi).getCode();
  assert.match(version.gitVersion, /^v1\./);
  const groups = await kc.makeApiClient(k8s.ApisApi).getAPIVersions();
  assert.ok(groups.groups.some((g) => g.name === 'apps'));
  await core.createNamespace({ body: { metadata: { name: NS } } }).catch((e) => assert.equal(e.code, 409));
});

test('config maps: create, patch of each type, select, replace, delete', async () => {
  await core.createNamespacedConfigMap({ namespace: NS, body: { metadata: { name: 'js', labels: { by: 'js' } }, data: { a: '1' } } });
  // The default patch type is a JSON patch.
  await core.patchNamespacedConfigMap({ name: 'js', namespace: NS, body: [{ op: 'add', path: '/data/b', value: '2' }] });
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  await core.patchNamespacedConfigMap({ name: 'js', namespace: NS, body: { data: { c: '3' } } }, merge);
  const strategic = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.StrategicMergePatch);
  const patched = await core.patchNamespacedConfigMap({ name: 'js', namespace: NS, body: { data: { d: '4' } } }, strategic);
  assert.deepEqual(patched.data, { a: '1', b: '2', c: '3', d: '4' });
  const byLabel = await core.listNamespacedConfigMap({ namespace: NS, labelSelector: 'by=js' });
  assert.deepEqual(byLabel.items.map((c) => c.metadata.name), ['js']);
  const byField = await core.listNamespacedConfigMap({ namespace: NS, fieldSelector: 'metadata.name=js' });
  assert.equal(byField.items.length, 1);
  patched.data.e = '5';
  const replaced = await core.replaceNamespacedConfigMap({ name: 'js', namespace: NS, body: patched });
  assert.equal(replaced.data.e, '5');
  await assert.rejects(core.replaceNamespacedConfigMap({ name: 'js', namespace: NS, body: patched }), (e) => e.code === 409);
  await core.deleteNamespacedConfigMap({ name: 'js', namespace: NS });
  await assert.rejects(core.readNamespacedConfigMap({ name: 'js', namespace: NS }), (e) => {
    assert.equal(e.code, 404);
    assert.equal(JSON.parse(e.body).reason, 'NotFound');
    return true;
  });
});

test('a watch and an informer see changes', async () => {
  const list = await core.listNamespacedConfigMap({ namespace: NS, labelSelector: 'watched=js' });
  const seen = [];
  const watch = new k8s.Watch(kc);
  const done = new Promise((resolve) => {
    watch.watch(`/api/v1/namespaces/${NS}/configmaps`, { labelSelector: 'watched=js', resourceVersion: list.metadata.resourceVersion },
      (type, obj) => { seen.push(`${type} ${obj.metadata.name}`); if (type === 'DELETED') resolve(); },
      () => {}).then((req) => { done.req = req; });
  });
  const informer = k8s.makeInformer(kc, `/api/v1/namespaces/${NS}/configmaps`, () => core.listNamespacedConfigMap({ namespace: NS, labelSelector: 'watched=js' }), 'watched=js');
  const informed = new Promise((resolve) => informer.on('delete', (obj) => resolve(obj.metadata.name)));
  await informer.start();
  await core.createNamespacedConfigMap({ namespace: NS, body: { metadata: { name: 'w', labels: { watched: 'js' } } } });
  await core.deleteNamespacedConfigMap({ name: 'w', namespace: NS });
  await done;
  assert.deepEqual(seen, ['ADDED w', 'DELETED w']);
  assert.equal(await informed, 'w');
  await informer.stop();
  done.req?.abort();
});

test('a deployment scales through its subresource and its pods log', async () => {
  await apps.createNamespacedDeployment({ namespace: NS, body: {
    metadata: { name: 'js' },
    spec: { replicas: 1, selector: { matchLabels: { app: 'js' } },
      template: { metadata: { labels: { app: 'js' } }, spec: { containers: [{ name: 'app', image }] } } },
  } });
  await apps.patchNamespacedDeploymentScale({ name: 'js', namespace: NS, body: { spec: { replicas: 2 } } },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  assert.equal((await apps.readNamespacedDeploymentScale({ name: 'js', namespace: NS })).spec.replicas, 2);
  await eventually(async () => (await apps.readNamespacedDeployment({ name: 'js', namespace: NS })).status?.readyReplicas === 2);
  const pods = await core.listNamespacedPod({ namespace: NS, labelSelector: 'app=js' });
  const pod = pods.items[0].metadata.name;
  const log = await eventually(() => core.readNamespacedPodLog({ name: pod, namespace: NS }));
  assert.ok(log.length > 0);
  await apps.deleteNamespacedDeployment({ name: 'js', namespace: NS, propagationPolicy: 'Foreground' });
});
